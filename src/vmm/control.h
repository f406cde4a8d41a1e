// The control socket's commands on the machine: the bridge between the QMP
// server's thread and the vCPU thread that runs Machine::run. A command that
// touches the machine is posted to it (Machine::post) and runs at the vCPU
// loop's next safe point; the QMP thread waits for its answer. The machine
// may be replaced (system_reset builds a new one), so commands wait for the
// current one.
#pragma once
#include <condition_variable>
#include <functional>
#include <mutex>

#include "machine/machine.h"
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
};

}  // namespace popek::vmm
