#include "vmm/control.h"

#include <chrono>
#include <future>
#include <memory>

namespace popek::vmm {

using machine::Machine;
using machine::Outcome;

json popek_version() {
  return json{{"qemu", json{{"major", 0}, {"minor", 1}, {"micro", 0}}}, {"package", "popek"}};
}

Controller::Controller(QmpServer& qmp) : qmp_(qmp) {}

void Controller::attach(Machine* m) {
  std::lock_guard<std::mutex> lk(mu_);
  machine_ = m;
  generation_++;
  cv_.notify_all();
}

void Controller::detach() {
  std::lock_guard<std::mutex> lk(mu_);
  machine_ = nullptr;
}

void Controller::finish() {
  std::lock_guard<std::mutex> lk(mu_);
  machine_ = nullptr;
  finished_ = true;
  cv_.notify_all();
}

json Controller::call(std::function<json(Machine&)> fn) {
  using namespace std::chrono_literals;
  struct Answer {
    bool ran = false;  // false: that machine's run ended before the safe point
    json value;
    std::exception_ptr error;
  };
  u64 skip = 0;  // a machine generation whose run has ended
  for (;;) {
    auto promise = std::make_shared<std::promise<Answer>>();
    std::future<Answer> answer = promise->get_future();
    {
      std::unique_lock<std::mutex> lk(mu_);
      // Between machines (system_reset rebuilds one) this waits.
      if (!cv_.wait_for(lk, 30s, [&] { return finished_ || (machine_ && generation_ != skip); }))
        throw QmpError("GenericError", "the virtual machine is not ready (waited 30 s)");
      if (finished_) throw QmpError("GenericError", "the virtual machine has ended");
      skip = generation_;
      machine_->post([promise, fn](Machine* m) {
        Answer a;
        if (m) {
          a.ran = true;
          try {
            a.value = fn(*m);
          } catch (...) {
            a.error = std::current_exception();
          }
        }
        promise->set_value(std::move(a));
      });
    }
    if (answer.wait_for(10s) != std::future_status::ready)
      throw QmpError("GenericError", "the vCPU did not reach a safe point within 10 s");
    Answer a = answer.get();
    if (!a.ran) continue;  // ended (quit, reset, the guest): ask the next machine, if one comes
    if (a.error) std::rethrow_exception(a.error);
    return a.value;
  }
}

void Controller::register_commands() {
  qmp_.add_command({"query-status", {}, [this](const json&) {
                      return call([](Machine& m) {
                        return json{{"running", !m.paused()},
                                    {"singlestep", false},
                                    {"status", m.paused() ? "paused" : "running"}};
                      });
                    }});
  // stop: the guest stops at the next instruction (interp) or block (bt)
  // boundary; its clock stands still (VirtualClock::pause) until cont.
  qmp_.add_command({"stop", {}, [this](const json&) {
                      return call([this](Machine& m) {
                        if (!m.paused()) {
                          m.pause();
                          qmp_.emit("STOP");
                        }
                        return json::object();
                      });
                    }});
  qmp_.add_command({"cont", {}, [this](const json&) {
                      return call([this](Machine& m) {
                        if (m.paused()) {
                          m.resume();
                          qmp_.emit("RESUME");
                        }
                        return json::object();
                      });
                    }});
  // system_reset: the run ends at the safe point and main builds the machine
  // anew from the same configuration (RAM, devices, CPU, kernel or firmware):
  // a cold reset. A paused machine stays paused.
  qmp_.add_command({"system_reset", {}, [this](const json&) {
                      return call([](Machine& m) {
                        m.end_run(Outcome::host_reset);
                        return json::object();
                      });
                    }});
  qmp_.add_command({"quit", {}, [this](const json&) {
                      return call([](Machine& m) {
                        m.end_run(Outcome::host_quit);
                        return json::object();
                      });
                    }});
  // The PC board has no ACPI, no APM BIOS and no other power button a guest
  // could see; Linux on it powers off only on its own (poweroff halts the CPU
  // with interrupts off). Saying so beats pretending.
  qmp_.add_command({"system_powerdown", {}, [](const json&) -> json {
                      throw QmpError("GenericError",
                                     "system_powerdown is not supported: popek's PC board has no ACPI (nor "
                                     "any other power button the guest could see), so the guest cannot be "
                                     "asked to power off; power it off from inside (poweroff), or use "
                                     "'quit' to end the VM at once");
                    }});
  qmp_.add_command({"query-popek-stats", {}, [this](const json&) {
                      return call([](Machine& m) {
                        json out = json::object();
                        out["cpu.instructions"] = m.cpu().icount;
                        for (auto& [k, v] : m.stats()) out[k] = v;
                        return out;
                      });
                    }});
  // Migration and snapshots (issue 20) come later: until then these names
  // answer plainly and are not listed by query-commands. The implementation
  // replaces each with a real Command (listed = true, its params).
  for (const char* name : {"migrate", "migrate_cancel", "query-migrate", "migrate-set-parameters"}) {
    Command c;
    c.name = name;
    c.listed = false;
    c.handler = [n = std::string(name)](const json&) -> json {
      throw QmpError("GenericError", n + ": migration is not implemented yet in popek");
    };
    c.check_args = false;  // any arguments: the answer is the same
    qmp_.add_command(std::move(c));
  }
}

void Controller::run_ended(const machine::RunResult& r) {
  bool guest = true;
  const char* reason = "guest-shutdown";
  switch (r.outcome) {
    case Outcome::host_reset:
      qmp_.emit("RESET", json{{"guest", false}, {"reason", "host-qmp-system-reset"}});
      return;
    case Outcome::poweroff:
    case Outcome::debug_exit:
    case Outcome::halted: break;
    case Outcome::reset:  // popek ends the run when the guest resets (as QEMU's -no-reboot)
    case Outcome::triple_fault: reason = "guest-reset"; break;
    case Outcome::insn_limit: guest = false; reason = "host-error"; break;
    case Outcome::stopped: guest = false; reason = "host-signal"; break;
    case Outcome::console_quit: guest = false; reason = "host-ui"; break;
    case Outcome::host_quit: guest = false; reason = "host-qmp-quit"; break;
  }
  qmp_.emit("SHUTDOWN", json{{"guest", guest}, {"reason", reason}});
}

}  // namespace popek::vmm
