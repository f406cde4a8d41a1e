#include "vmm/control.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>

#include "base/error.h"
#include "block/file.h"
#include "snapshot/stream.h"

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
  {
    std::lock_guard<std::mutex> lk(mu_);
    machine_ = nullptr;
  }
  cancel_migration(true);  // (after: see start_live_migration)
}

void Controller::finish() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    machine_ = nullptr;
    finished_ = true;
    cv_.notify_all();
  }
  cancel_migration(true);
}

json Controller::call(std::function<json(Machine&)> fn, int timeout_s) {
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
    if (answer.wait_for(std::chrono::seconds(timeout_s)) != std::future_status::ready)
      throw QmpError("GenericError", "the vCPU did not reach a safe point and answer within " +
                                         std::to_string(timeout_s) + " s");
    Answer a = answer.get();
    if (!a.ran) continue;  // ended (quit, reset, the guest): ask the next machine, if one comes
    if (a.error) std::rethrow_exception(a.error);
    return a.value;
  }
}

void Controller::register_commands() {
  qmp_.add_command({"query-status", {}, [this](const json&) {
                      return call([this](Machine& m) {
                        return json{{"running", !m.paused()},
                                    {"singlestep", false},
                                    {"status", !m.paused() ? "running" : postmigrate_ ? "postmigrate" : "paused"}};
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
                        if (postmigrate_) {
                          // After a live migration the images' locks and the
                          // hostfwd ports went to the destination.
                          try {
                            block::acquire_image_locks(0);
                            m.claim_host_ports();
                          } catch (const std::exception& e) {
                            throw QmpError("GenericError", std::string("cont: ") + e.what());
                          }
                        }
                        postmigrate_ = false;
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
  // system_powerdown presses the ACPI power button (PWRBTN_STS; the SCI if
  // the guest enabled it), as QEMU does: the guest decides what to do (Linux's
  // button driver reports KEY_POWER; acpid or logind power off). POWERDOWN
  // says the button was pressed; SHUTDOWN follows if the guest powers off.
  // A paused guest sees the press when it runs again.
  qmp_.add_command({"system_powerdown", {}, [this](const json&) {
                      return call([this](Machine& m) {
                        if (!m.press_power_button())
                          throw QmpError("GenericError",
                                         "system_powerdown: this machine runs with --no-acpi, so it has no "
                                         "power button the guest could see; power it off from inside "
                                         "(poweroff), or use 'quit' to end the VM at once");
                        qmp_.emit("POWERDOWN");
                        return json::object();
                      });
                    }});
  qmp_.add_command({"query-popek-stats", {}, [this](const json&) {
                      return call([](Machine& m) {
                        json out = json::object();
                        out["cpu.instructions"] = m.cpu().icount;
                        for (auto& [k, v] : m.stats()) out[k] = v;
                        return out;
                      });
                    }});
  // Engine switching: the guest goes on on another engine from the next
  // safe point (a schedule or the hybrid policy stops steering); the query
  // says which runs it, which exist, the schedule and the switches so far.
  qmp_.add_command({"x-popek-set-engine",
                    {{"engine", ArgType::string, true}},
                    [this](const json& args) -> json {
                      const std::string name = args.at("engine").get<std::string>();
                      machine::EngineKind k;
                      if (!machine::parse_engine_kind(name, &k))
                        throw QmpError("GenericError", "x-popek-set-engine: unknown engine '" + name +
                                                           "' (interp, bt, kvm)");
                      return call([k](Machine& m) {
                        try {
                          m.set_engine(k);
                        } catch (const Error& e) {
                          throw QmpError("GenericError", std::string("x-popek-set-engine: ") + e.what());
                        }
                        return json::object();
                      }, 30);
                    }});
  qmp_.add_command({"x-popek-query-engine", {}, [this](const json&) {
                      return call([](Machine& m) {
                        json engines = json::array();
                        for (machine::EngineKind k : m.engines()) engines.push_back(machine::engine_kind_name(k));
                        json out{{"engine", machine::engine_kind_name(m.engine_kind())},
                                 {"engines", engines},
                                 {"hybrid", m.hybrid()},
                                 {"switches", m.switches()}};
                        const std::string spec = m.schedule_spec();
                        if (!spec.empty()) out["schedule"] = spec;
                        return out;
                      });
                    }});
  // migrate: to "file:PATH" only (suspend to a file); see migrate_to_file.
  qmp_.add_command({"migrate",
                    {{"uri", ArgType::string, true},
                     {"detach", ArgType::boolean, false},
                     {"resume", ArgType::boolean, false},
                     {"blk", ArgType::boolean, false},
                     {"inc", ArgType::boolean, false}},
                    [this](const json& args) -> json {
                      const std::string uri = args.at("uri").get<std::string>();
                      for (const char* flag : {"resume", "blk", "inc"})
                        if (args.contains(flag) && args.at(flag).get<bool>())
                          throw QmpError("GenericError", std::string("migrate: '") + flag + "' is not supported");
                      if (uri.rfind("tcp:", 0) == 0) return start_live_migration(uri);
                      if (uri.rfind("file:", 0) != 0)
                        throw QmpError("GenericError", "migrate: unsupported URI '" + uri +
                                                           "' (popek supports file:PATH and tcp:HOST:PORT)");
                      if (mig_active_.load())
                        throw QmpError("GenericError", "migrate: a migration is already running");
                      const std::string path = uri.substr(5);
                      if (path.empty()) throw QmpError("GenericError", "migrate: file: needs a path");
                      return call([this, path](Machine& m) { return migrate_to_file(m, path); }, 3600);
                    }});
  qmp_.add_command({"query-migrate", {}, [this](const json&) { return query_migrate(); }});
  register_migration_commands();
}

void Controller::set_migration(const json& info) {
  std::lock_guard<std::mutex> lk(mig_mu_);
  migration_ = info;
}

json Controller::query_migrate() {
  std::lock_guard<std::mutex> lk(mig_mu_);
  return migration_;
}

// Suspend to a file, as QEMU's migrate to file: does: the VM stops (STOP if
// it ran), in-flight disk requests complete and the images are flushed, the
// state goes to PATH.tmp, which is fsync'd and renamed to PATH; the VM stays
// stopped ("postmigrate") until cont or quit. On failure the VM runs again if
// it ran before, and nothing is left at PATH. The answer comes when the file
// is complete (query-migrate then says "completed").
json Controller::migrate_to_file(Machine& m, const std::string& path) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  std::string why;
  if (!m.can_save(&why)) {
    set_migration(json{{"status", "failed"}, {"error-desc", why}});
    qmp_.emit("MIGRATION", json{{"status", "failed"}});
    throw QmpError("GenericError", "migrate: " + why);
  }
  qmp_.emit("MIGRATION", json{{"status", "setup"}});
  const bool was_running = !m.paused();
  if (was_running) {
    m.pause();
    qmp_.emit("STOP");
  }
  set_migration(json{{"status", "active"}});
  qmp_.emit("MIGRATION", json{{"status", "active"}});
  const std::string tmp = path + ".tmp";
  try {
    snap::FileSink out(tmp);
    machine::SaveStats st = m.save_state(out);
    out.close();
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw Error("rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    const u64 ram_total = st.ram_pages * snap::kPageSize;
    json info{{"status", "completed"},
              {"total-time", u64(ms)},
              {"downtime", u64(ms)},
              {"setup-time", 0},
              {"ram", json{{"transferred", st.bytes},
                           {"total", ram_total},
                           {"remaining", 0},
                           {"duplicate", st.zero_pages},
                           {"normal", st.ram_pages - st.zero_pages},
                           {"normal-bytes", st.ram_raw_bytes},
                           {"mbps", ms > 0 ? double(st.bytes) * 8 / 1e6 / (ms / 1e3) : 0.0},
                           {"dirty-sync-count", 1}}},
              {"popek", json{{"file", path}, {"compressed-ram-bytes", st.ram_compressed_bytes}}}};
    set_migration(info);
    postmigrate_ = true;
    qmp_.emit("MIGRATION", json{{"status", "completed"}});
    return json::object();
  } catch (const std::exception& e) {
    ::unlink(tmp.c_str());
    const std::string msg = e.what();
    set_migration(json{{"status", "failed"}, {"error-desc", msg}});
    qmp_.emit("MIGRATION", json{{"status", "failed"}});
    if (was_running) {
      m.resume();
      qmp_.emit("RESUME");
    }
    throw QmpError("GenericError", "migrate: " + msg);
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
