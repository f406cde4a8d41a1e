// The control socket's commands on the machine: the bridge between the QMP
// server's thread and the vCPU thread that runs Machine::run. A command that
// touches the machine is posted to it (Machine::post) and runs at the vCPU
// loop's next safe point; the QMP thread waits for its answer. The machine
// may be replaced (system_reset builds a new one), so commands wait for the
// current one.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "machine/machine.h"
#include "vmm/migration_net.h"
#include "vmm/qmp.h"

namespace popek::vmm {

// query-version's and the greeting's version: popek's own (QMP clients read
// the "qemu" triple; "package" says what it is).
json popek_version();

class Controller {
 public:
  explicit Controller(QmpServer& qmp);
  ~Controller() { finish(); }

  // Adds the commands (stop, cont, system_reset, ...) to the server.
  void register_commands();

  // The vCPU thread's side (main): attach before Machine::run, detach after
  // it returned and before the machine is destroyed; finish when no machine
  // will come (commands then fail at once).
  void attach(machine::Machine* m);
  // detach and finish first cancel a live migration still running (its
  // thread reads the machine's RAM) and wait for its thread.
  void detach();
  void finish();

  // Events for how a run ended: SHUTDOWN (with "guest" and "reason"), or
  // RESET when the machine is rebuilt for system_reset.
  void run_ended(const machine::RunResult& r);

 private:
  // Runs fn on the vCPU thread at a safe point of the current machine and
  // returns its answer (rethrows its QmpError). `timeout_s`: how long fn may
  // take (migrate writes the whole RAM).
  json call(std::function<json(machine::Machine&)> fn, int timeout_s = 10);
  // migrate to "file:PATH" (vCPU thread).
  json migrate_to_file(machine::Machine& m, const std::string& path);
  json query_migrate();
  void set_migration(const json& info);
  // Live migration (migration.cpp): migrate to tcp: starts a thread that
  // sends the stream while the guest runs; see run_migration.
  void register_migration_commands();
  json start_live_migration(const std::string& uri);
  void run_migration(machine::Machine* m, TcpAddress to, u64 downtime_limit_ms, u64 max_bandwidth);
  // Runs fn on m's vCPU thread at a safe point and waits; false if m's run
  // ended first. Rethrows fn's exception.
  bool on_vcpu(machine::Machine* m, const std::function<void(machine::Machine&)>& fn);
  // Cancels a live migration (the source keeps running) and, with `wait`,
  // joins its thread.
  void cancel_migration(bool wait);

  QmpServer& qmp_;
  std::mutex mu_;
  std::condition_variable cv_;
  machine::Machine* machine_ = nullptr;  // guarded by mu_
  u64 generation_ = 0;                   // attaches so far, guarded by mu_
  bool finished_ = false;                // guarded by mu_
  // The last migration: query-migrate's answer ({} before any), and whether
  // the machine is stopped because one completed (query-status says
  // "postmigrate" until cont, as QEMU does).
  std::mutex mig_mu_;
  json migration_ = json::object();  // guarded by mig_mu_
  bool postmigrate_ = false;         // vCPU thread only
  // Live migration: its thread, whether it runs, a cancel request, its
  // socket (shut down to cancel), the parameters (migrate-set-parameters;
  // QEMU's names and default downtime limit).
  std::thread mig_thread_;                  // started and joined under mig_ctl_mu_
  std::mutex mig_ctl_mu_;
  std::atomic<bool> mig_active_{false};
  std::atomic<bool> mig_cancel_{false};
  std::atomic<int> mig_fd_{-1};
  u64 downtime_limit_ms_ = 300;  // guarded by mig_mu_
  u64 max_bandwidth_ = 0;        // bytes/s, 0: unlimited; guarded by mig_mu_
  u64 max_passes_ = 30;          // passes before the switch-over in any case; guarded by mig_mu_
};

}  // namespace popek::vmm
