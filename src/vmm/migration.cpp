// Live migration, the source's side (QMP migrate to tcp:HOST:PORT): pre-copy.
//
// A thread of its own sends the stream (src/snapshot/stream.h) while the
// guest runs:
//   setup   connect; the "machine" section; the dirty log on (PhysMem: every
//           page watched until its first write of a pass, whatever writes it)
//   pass 1  all of RAM as "ram" sections, read while the guest runs
//   pass k  the pages the log caught since the previous pass, "ram-pages"
//   until   the pages left would go within downtime-limit at the bandwidth
//           the last pass measured, or max passes; then, on the vCPU thread:
//           stop, drain in-flight disk requests and flush the images, the
//           last dirty pages, the CPU and devices (with libslirp's state),
//           release the image locks and the hostfwd ports, "end", and wait
//           for the destination's "POPEK-OK" (it has checked the whole
//           stream, taken the image locks and bound the hostfwd ports).
//           Completed: the source stays stopped ("postmigrate") until quit.
// Any failure before the acknowledgement (the connection breaks, the
// destination dies or refuses, migrate_cancel): the dirty log goes off, the
// image locks and hostfwd ports are taken back and the guest runs on as if
// nothing happened (a port someone else took meanwhile is reported in the
// error; the guest runs on without that forward).
// If the locks cannot be taken back (the destination took them: it runs the
// guest), the source stays stopped: two VMs must never write one image.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>

#include "base/error.h"
#include "block/file.h"
#include "snapshot/stream.h"
#include "vmm/control.h"

namespace popek::vmm {

using machine::Machine;
using steady = std::chrono::steady_clock;

namespace {
double ms_since(steady::time_point t) { return std::chrono::duration<double, std::milli>(steady::now() - t).count(); }

// Waits up to timeout_ms for the destination's answer line.
std::string read_reply(int fd, int timeout_ms) {
  std::string line;
  const auto end = steady::now() + std::chrono::milliseconds(timeout_ms);
  while (line.find('\n') == std::string::npos) {
    const int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(end - steady::now()).count());
    if (left <= 0) throw Error("the destination did not acknowledge the stream within " +
                               std::to_string(timeout_ms / 1000) + " s");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("the destination closed the connection before acknowledging the stream");
    line.append(buf, usize(n));
    if (line.size() > 4096) throw Error("the destination's answer is not a popek migration acknowledgement");
  }
  return line.substr(0, line.find('\n'));
}
}  // namespace

bool Controller::on_vcpu(Machine* m, const std::function<void(Machine&)>& fn) {
  struct Answer {
    bool ran = false;
    std::exception_ptr error;
  };
  auto promise = std::make_shared<std::promise<Answer>>();
  auto future = promise->get_future();
  m->post([promise, &fn](Machine* mm) {
    Answer a;
    if (mm) {
      a.ran = true;
      try {
        fn(*mm);
      } catch (...) {
        a.error = std::current_exception();
      }
    }
    promise->set_value(std::move(a));
  });
  Answer a = future.get();
  if (a.error) std::rethrow_exception(a.error);
  return a.ran;
}

void Controller::cancel_migration(bool wait) {
  std::lock_guard<std::mutex> lk(mig_ctl_mu_);
  if (mig_active_.load()) {
    mig_cancel_.store(true);
    std::lock_guard<std::mutex> g(mig_mu_);  // (the thread closes the fd under it)
    const int fd = mig_fd_.load();
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);  // out of a blocked send or a wait for the answer
  }
  if (wait && mig_thread_.joinable()) mig_thread_.join();
}

void Controller::register_migration_commands() {
  qmp_.add_command({"migrate_cancel", {}, [this](const json&) {
                      cancel_migration(false);
                      return json::object();
                    }});
  qmp_.add_command({"migrate-set-parameters",
                    {{"downtime-limit", ArgType::integer, false},
                     {"max-bandwidth", ArgType::integer, false},
                     {"x-popek-max-passes", ArgType::integer, false}},
                    [this](const json& args) {
                      auto get = [&](const char* k, i64 lo, i64 hi) -> std::optional<u64> {
                        if (!args.contains(k)) return std::nullopt;
                        const i64 v = args.at(k).get<i64>();
                        if (v < lo || v > hi)
                          throw QmpError("GenericError", std::string("migrate-set-parameters: '") + k +
                                                             "' must be between " + std::to_string(lo) +
                                                             " and " + std::to_string(hi));
                        return u64(v);
                      };
                      auto dl = get("downtime-limit", 0, 2000000);
                      auto bw = get("max-bandwidth", 0, i64(1) << 50);
                      auto mp = get("x-popek-max-passes", 1, 1000);
                      std::lock_guard<std::mutex> lk(mig_mu_);
                      if (dl) downtime_limit_ms_ = *dl;
                      if (bw) max_bandwidth_ = *bw;
                      if (mp) max_passes_ = *mp;
                      return json::object();
                    }});
  qmp_.add_command({"query-migrate-parameters", {}, [this](const json&) {
                      std::lock_guard<std::mutex> lk(mig_mu_);
                      return json{{"downtime-limit", downtime_limit_ms_},
                                  {"max-bandwidth", max_bandwidth_},
                                  {"x-popek-max-passes", max_passes_}};
                    }});
}

json Controller::start_live_migration(const std::string& uri) {
  TcpAddress to;
  try {
    to = parse_tcp_uri(uri, "migrate");
  } catch (const Error& e) {
    throw QmpError("GenericError", e.what());
  }
  if (to.port == 0) throw QmpError("GenericError", "migrate: tcp: needs the destination's port");
  if (mig_active_.load()) throw QmpError("GenericError", "migrate: a migration is already running");
  Machine* target = nullptr;
  u64 gen = 0;
  call([&](Machine& m) {
    std::string why;
    if (!m.can_save(&why)) throw QmpError("GenericError", "migrate: " + why);
    // Live migration's dirty log sees writes that go through popek
    // (PhysMem); a guest on KVM writes RAM directly (KVM's own dirty log is
    // not read yet), so pre-copy would miss pages.
    // (Engine switching reads KVM's log at every handover, but not while
    // the guest runs on kvm: a machine that has a kvm engine is refused.)
    if (m.uses_kvm())
      throw QmpError("GenericError",
                     "migrate: live migration of a machine with the kvm engine is not supported yet (its "
                     "dirty log is not read while the guest runs on it); stop the VM and migrate to file: "
                     "instead");
    target = &m;
    std::lock_guard<std::mutex> g(mu_);
    gen = generation_;
    return json::object();
  });
  // (Not under mig_ctl_mu_ above: detach, on the vCPU thread, takes it.)
  // The machine stays while its run lasts, and detach (before it goes)
  // cancels and joins the thread started here; if that run has already
  // ended, on_vcpu finds out and the migration fails.
  std::lock_guard<std::mutex> lk(mig_ctl_mu_);
  if (mig_active_.load()) throw QmpError("GenericError", "migrate: a migration is already running");
  {
    // Still the machine that answered: detach clears machine_ before it
    // cancels (under mig_ctl_mu_, held here), so a thread started now is
    // joined before that machine goes.
    std::lock_guard<std::mutex> g(mu_);
    if (machine_ != target || generation_ != gen)
      throw QmpError("GenericError", "migrate: the virtual machine ended meanwhile");
  }
  if (mig_thread_.joinable()) mig_thread_.join();  // the previous one, ended
  u64 dl, bw;
  {
    std::lock_guard<std::mutex> g(mig_mu_);
    dl = downtime_limit_ms_;
    bw = max_bandwidth_;
  }
  mig_cancel_.store(false);
  mig_active_.store(true);
  set_migration(json{{"status", "setup"}});
  qmp_.emit("MIGRATION", json{{"status", "setup"}});
  mig_thread_ = std::thread([this, target, to, dl, bw] { run_migration(target, to, dl, bw); });
  return json::object();
}

void Controller::run_migration(Machine* m, TcpAddress to, u64 downtime_limit_ms, u64 max_bandwidth) {
  const auto t0 = steady::now();
  int fd = -1;
  bool logging = false;
  u64 passes = 0, ram_total = 0, dirty_rate = 0, remaining = 0, max_passes;
  double setup_ms = 0;
  snap::RamStats rs;
  {
    std::lock_guard<std::mutex> g(mig_mu_);
    max_passes = max_passes_;
  }
  std::unique_ptr<snap::FdSink> sink;
  auto progress = [&](const char* status) {
    const double ms = ms_since(t0);
    const u64 sent = sink ? sink->bytes() : 0;
    set_migration(json{{"status", status},
                        {"total-time", u64(ms)},
                        {"setup-time", u64(setup_ms)},
                        {"ram", json{{"transferred", sent},
                                     {"total", ram_total},
                                     {"remaining", remaining},
                                     {"duplicate", rs.zero_pages},
                                     {"normal", rs.pages - rs.zero_pages},
                                     {"normal-bytes", rs.raw_bytes},
                                     {"dirty-sync-count", passes},
                                     {"dirty-pages-rate", dirty_rate},
                                     {"mbps", ms > 0 ? double(sent) * 8 / 1e6 / (ms / 1e3) : 0.0}}}});
  };
  std::string error;
  bool completed = false, stays_stopped = false;
  try {
    fd = tcp_connect(to, 5000);
    mig_fd_.store(fd);
    if (mig_cancel_.load()) throw Error("cancelled");
    const std::string what = "migration to tcp:" + to.host + ":" + std::to_string(to.port);
    sink = std::make_unique<snap::FdSink>(fd, what);
    sink->set_rate_limit(max_bandwidth);
    snap::StreamWriter w(*sink);
    if (!on_vcpu(m, [&](Machine& mm) {
          mm.save_config(w);
          mm.mem().start_dirty_log();
          ram_total = 0;
          mm.mem().for_each_range([&](u64, u64 len) { ram_total += len; });
        }))
      throw Error("the VM ended");
    logging = true;
    setup_ms = ms_since(t0);
    progress("active");
    qmp_.emit("MIGRATION", json{{"status", "active"}});
    // Pass 1: all of RAM while the guest runs.
    auto pass_t = steady::now();
    u64 pass_bytes0 = sink->bytes();
    m->save_ram(w, &rs);
    sink->flush();
    passes = 1;
    std::vector<u32> dirty;
    for (;;) {
      if (mig_cancel_.load()) throw Error("cancelled");
      const double pass_ms = std::max(ms_since(pass_t), 0.1);
      const u64 pass_bytes = sink->bytes() - pass_bytes0;
      if (!on_vcpu(m, [&](Machine& mm) { dirty = mm.sync_dirty_log(); })) throw Error("the VM ended");
      dirty_rate = u64(double(dirty.size()) / (pass_ms / 1e3));
      remaining = dirty.size() * snap::kPageSize;
      // The time the pages left would take at the last pass's rate (bytes
      // on the wire per ms, compressed pages as sent).
      const double bytes_per_ms = double(pass_bytes) / pass_ms;
      const double est_ms = bytes_per_ms > 0 ? double(remaining) / bytes_per_ms : 0;
      progress("active");
      if (est_ms <= double(downtime_limit_ms) || passes >= max_passes) break;
      pass_t = steady::now();
      pass_bytes0 = sink->bytes();
      m->save_ram_pages(w, dirty, &rs);
      sink->flush();
      passes++;
    }
    // Switch-over, on the vCPU thread: the guest stops until the
    // destination has everything (or runs again at once on failure).
    double downtime = 0;
    if (!on_vcpu(m, [&](Machine& mm) {
          const auto td = steady::now();
          const bool was_running = !mm.paused();
          if (was_running) {
            mm.pause();
            qmp_.emit("STOP");
          }
          bool released = false;
          try {
            mm.quiesce();  // in-flight disk requests complete; the images are flushed
            const double q_ms = ms_since(td);
            std::vector<u32> more = mm.sync_dirty_log();
            dirty.insert(dirty.end(), more.begin(), more.end());
            std::sort(dirty.begin(), dirty.end());
            dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
            mm.mem().stop_dirty_log();
            logging = false;
            passes++;
            remaining = 0;
            mm.save_ram_pages(w, dirty, &rs);
            mm.save_devices(w);
            block::release_image_locks();
            mm.release_host_ports();  // the destination binds them (same host: same ports)
            released = true;
            w.end();
            sink->flush();
            const double sent_ms = ms_since(td);
            const std::string reply = read_reply(fd, 30000);
            if (reply != "POPEK-OK")
              throw Error("the destination refused the stream: " +
                          (reply.rfind("POPEK-ERR ", 0) == 0 ? reply.substr(10) : reply));
            downtime = ms_since(td);
            std::fprintf(stderr,
                         "popek: migration switch-over: %zu pages; drain+flush %.1f ms, last pages and "
                         "devices sent at %.1f ms, acknowledged at %.1f ms\n",
                         dirty.size(), q_ms, sent_ms, downtime);
            postmigrate_ = true;
            completed = true;
          } catch (const std::exception& e) {
            error = e.what();
            if (mig_cancel_.load()) error = "cancelled";
            bool relocked = true;
            if (released) {
              try {
                block::acquire_image_locks(0);
              } catch (const std::exception& le) {
                relocked = false;
                error += "; the image locks cannot be taken back (" + std::string(le.what()) +
                         "): the VM stays stopped";
              }
              try {
                mm.claim_host_ports();
              } catch (const std::exception& pe) {
                error += "; the host ports cannot be taken back: " + std::string(pe.what());
                std::fprintf(stderr, "popek: after the failed migration: %s\n", pe.what());
              }
            }
            if (logging) {
              mm.mem().stop_dirty_log();
              logging = false;
            }
            if (!relocked) {
              stays_stopped = true;
            } else if (was_running) {
              mm.resume();
              qmp_.emit("RESUME");
            }
          }
        }))
      throw Error("the VM ended");
    if (completed) {
      progress("completed");
      std::lock_guard<std::mutex> g(mig_mu_);
      migration_["downtime"] = u64(downtime + 0.5);
      migration_["popek"] = json{{"downtime-us", u64(downtime * 1000)},
                                 {"compressed-ram-bytes", rs.compressed_bytes}};
    }
  } catch (const std::exception& e) {
    error = mig_cancel_.load() ? "cancelled" : e.what();
    if (logging) {
      try {
        on_vcpu(m, [](Machine& mm) { mm.mem().stop_dirty_log(); });
      } catch (const std::exception&) {
      }
    }
  }
  if (!completed) {
    const bool cancelled = error == "cancelled";
    progress(cancelled ? "cancelled" : "failed");
    {
      std::lock_guard<std::mutex> g(mig_mu_);
      migration_["error-desc"] = error;
      if (stays_stopped) migration_["popek"] = json{{"stays-stopped", true}};
    }
    std::fprintf(stderr, "popek: migration %s: %s\n", cancelled ? "cancelled" : "failed", error.c_str());
  }
  {
    std::lock_guard<std::mutex> g(mig_mu_);
    const int f = mig_fd_.exchange(-1);
    if (f >= 0) ::close(f);
  }
  mig_active_.store(false);
  qmp_.emit("MIGRATION", json{{"status", completed ? "completed" : error == "cancelled" ? "cancelled" : "failed"}});
}

}  // namespace popek::vmm
