// popek: the command line.
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/error.h"
#include "block/tool/img.h"
#include "engine/kvm/kvm.h"
#include "machine/machine.h"
#include "block/file.h"
#include "vmm/control.h"
#include "vmm/migration_net.h"
#include "vmm/qmp.h"

using namespace popek;

namespace {

// An option naming where a bt feature applies (BtOptions::Superblocks, Memo):
// user, all or off.
template <typename Scope>
void add_scope_option(CLI::App* app, const std::string& name, Scope& target, const std::string& help) {
  app->add_option_function<std::string>(
         name,
         [&target](const std::string& v) {
           target = v == "all" ? Scope::all : v == "off" ? Scope::off : Scope::user;
         },
         help)
      ->check(CLI::IsMember({"user", "all", "off"}));
}

std::atomic<machine::Machine*> g_machine{nullptr};
std::atomic<bool> g_signalled{false};  // also between two machines (system_reset)
void on_signal(int) {
  g_signalled.store(true);
  if (machine::Machine* m = g_machine.load()) m->request_stop();
}

u64 parse_size(const std::string& s) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str()) throw Error("bad size '" + s + "' (expected e.g. 256M, 1G, 4096K)");
  u64 mul = 1;
  std::string suf(end);
  if (suf == "" || suf == "M" || suf == "m") mul = 1ull << 20;  // QEMU's default unit
  else if (suf == "K" || suf == "k") mul = 1ull << 10;
  else if (suf == "G" || suf == "g") mul = 1ull << 30;
  else if (suf == "B" || suf == "b") mul = 1;
  else throw Error("bad size suffix in '" + s + "' (use K, M or G)");
  return v * mul;
}

// The control sockets (--qmp) and their commands. The destructor ends them in
// the safe order: the controller fails pending commands, then the server
// thread sends what is queued and stops.
struct ControlSockets {
  std::unique_ptr<vmm::QmpServer> qmp;
  std::unique_ptr<vmm::Controller> ctl;
  ~ControlSockets() {
    if (ctl) ctl->finish();
    if (qmp) qmp->stop();
  }
};

// --incoming tcp:HOST:PORT: listens, prints the address, accepts one
// connection; the machine then reads its state from it (Config::incoming_fd).
// The images are opened with their locks deferred: the source holds them
// until it has sent everything.
int accept_incoming(const vmm::TcpAddress& a, machine::Config& cfg) {
  std::string bound;
  const int lfd = vmm::tcp_listen(a, &bound);
  std::fprintf(stderr, "popek: waiting for a migration on tcp:%s\n", bound.c_str());
  for (;;) {  // (SIGINT and SIGTERM end the wait)
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, 200) > 0) break;
    if (g_signalled.load()) {
      ::close(lfd);
      throw Error("stopped by a signal while waiting for a migration");
    }
  }
  const int fd = vmm::tcp_accept_one(lfd);
  cfg.incoming_fd = fd;
  cfg.incoming_what = "--incoming tcp:" + bound;
  block::set_defer_image_locks(true);
  cfg.virtio.defer_host_ports = true;
  return fd;
}

// The stream is complete and checked (the machine is built from it): take
// the image locks and bind the hostfwd ports the source released, then
// acknowledge. On failure the source is told why (it runs on) and this popek
// exits.
void finish_incoming(int fd, machine::Config& cfg, machine::Machine& m) {
  auto reply = [&](const std::string& line) {
    const std::string l = line + "\n";
    (void)!::send(fd, l.data(), l.size(), MSG_NOSIGNAL);
  };
  try {
    block::acquire_image_locks(10000);
    m.claim_host_ports();
  } catch (const Error& e) {
    // Let go of what was taken before the source hears of the refusal: it
    // takes its image locks back at once (and would otherwise stay stopped).
    block::release_image_locks();
    m.release_host_ports();
    reply(std::string("POPEK-ERR ") + e.what());
    ::close(fd);
    throw;
  }
  block::set_defer_image_locks(false);
  cfg.virtio.defer_host_ports = false;
  reply("POPEK-OK");
  ::close(fd);
  cfg.incoming_fd = -1;
}

int cmd_run(machine::Config cfg, bool stats, const std::vector<std::string>& qmp_specs,
            const std::optional<vmm::TcpAddress>& incoming_tcp) {
  ControlSockets control;
  if (!qmp_specs.empty()) {
    control.qmp = std::make_unique<vmm::QmpServer>(vmm::popek_version());
    for (const auto& spec : qmp_specs) control.qmp->listen(vmm::parse_endpoint(spec));
    control.ctl = std::make_unique<vmm::Controller>(*control.qmp);
    control.ctl->register_commands();
    control.qmp->start();
    for (const auto& a : control.qmp->addresses()) std::fprintf(stderr, "popek: QMP on %s\n", a.c_str());
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<machine::Machine> m;
  machine::RunResult r;
  bool paused = false;
  bool migrated = false;  // --incoming tcp: done (a reset boots afresh)
  for (;;) {
    m.reset();  // the old machine's RAM and devices go before the new one's come
    int in_fd = -1;
    if (incoming_tcp && cfg.incoming_fd < 0 && !migrated) in_fd = accept_incoming(*incoming_tcp, cfg);
    const auto tb = std::chrono::steady_clock::now();
    try {
      m = std::make_unique<machine::Machine>(cfg);
    } catch (const Error& e) {
      if (in_fd >= 0) {
        const std::string l = std::string("POPEK-ERR ") + e.what() + "\n";
        (void)!::send(in_fd, l.data(), l.size(), MSG_NOSIGNAL);
        ::close(in_fd);
      }
      throw;
    }
    if (in_fd >= 0) {
      const auto tm = std::chrono::steady_clock::now();
      finish_incoming(in_fd, cfg, *m);
      migrated = true;
      const auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
      std::fprintf(stderr,
                   "popek: migration stream received and checked in %.0f ms (loaded at %.1f ms, machine "
                   "ready at %.1f ms, image locks and host ports taken and acknowledged at %.1f ms); the guest "
                   "runs\n",
                   ms(tb, std::chrono::steady_clock::now()), ms(tb, m->stream_loaded()), ms(tb, tm),
                   ms(tb, std::chrono::steady_clock::now()));
    }
    if (!cfg.incoming.empty())
      std::fprintf(stderr, "popek: resumed from %s in %.0f ms (machine built and state loaded)\n",
                   cfg.incoming.c_str(),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - tb).count());
    if (paused) m->pause();
    g_machine.store(m.get());
    if (g_signalled.load()) m->request_stop();
    if (control.ctl) control.ctl->attach(m.get());
    try {
      r = m->run();
    } catch (...) {  // commands must not find a machine about to go
      if (control.ctl) control.ctl->detach();
      g_machine.store(nullptr);
      throw;
    }
    if (control.ctl) control.ctl->detach();
    g_machine.store(nullptr);
    if (control.ctl) control.ctl->run_ended(r);
    // system_reset from the control socket: the machine is built anew (a cold
    // reset); it stays paused if it was.
    if (r.outcome != machine::Outcome::host_reset) break;
    paused = m->paused();
    cfg.append_outputs = true;  // the trace and debug-port logs go on
    cfg.incoming.clear();       // a reset boots afresh
    std::fprintf(stderr, "popek: %s\n", r.message.c_str());
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "popek: %s\n", r.message.c_str());
  if (stats) {
    std::fprintf(stderr, "popek: statistics (%.3f s wall, %.1f guest MIPS)\n", secs,
                 secs > 0 ? double(m->cpu().icount) / secs / 1e6 : 0.0);
    for (auto& [k, v] : m->stats()) std::fprintf(stderr, "  %-40s %llu\n", k.c_str(), (unsigned long long)v);
  }
  return r.exit_status;
}

}  // namespace

int main(int argc, char** argv) {
  // `popek img ...`: the disk-image tool (create, info, check, convert).
  if (argc >= 2 && std::string(argv[1]) == "img") return block::img_main(argc - 1, argv + 1);
  CLI::App app{"popek: a virtual machine monitor for x86"};
  app.require_subcommand(1);
  app.footer("Also: popek img create|info|check|convert ... (disk images; see popek img --help)");

  machine::Config cfg;
  std::string mem = "256M";
  std::vector<std::string> dports;
  bool stats = false;
  CLI::App* run = app.add_subcommand("run", "Run a virtual machine");
  run->add_option("--firmware", cfg.firmware,
                  "Raw ROM image (multiple of 4 KiB, <= 256 KiB) mapped to end at 0xFFFFF and at "
                  "4 GiB; the CPU starts at the reset vector F000:FFF0 in real mode");
  run->add_option("--kernel", cfg.kernel, "Linux bzImage to boot (32-bit boot protocol); default: the fetched Debian guest");
  run->add_option("--initrd", cfg.initrd, "Initial ramdisk for --kernel");
  run->add_option("--append", cfg.append, "Kernel command line")->capture_default_str();
  run->add_option("-m,--memory", mem, "Guest RAM size, e.g. 256M, 1G (default unit MiB)")
      ->capture_default_str();
  run->add_option("--engine", cfg.engine, "Execution engine: bt (binary translation), interp (reference interpreter), kvm "
                  "(hardware-assisted, through /dev/kvm) or hybrid (kvm, with stretches of frequent exits "
                  "moved to bt and back; see docs/kvm.md)")
      ->capture_default_str();
  run->add_option("--engine-schedule", cfg.engine_schedule,
                  std::string(machine::engine_schedule_help()) + " (overrides --engine; see docs/engines.md)")
      ->type_name("SPEC");
  run->add_flag("--switch-check", cfg.switch_check,
                "At every engine switch check the handover: the state the next engine starts from (kvm: "
                "as read back from the vCPU) must equal the one the last left, and guest RAM's hash must "
                "not change; a difference ends the run with an error (costs a hash of RAM per switch)");
  run->add_flag("--lockstep", cfg.bt.lockstep,
                "bt: run the interpreter beside the translator and stop at the first divergence");
  run->add_option("--bt-block-insns", cfg.bt.block_insns,
                  "bt: guest instructions per translated block at most (1: one per block)")
      ->capture_default_str();
  run->add_flag("!--bt-no-chain", cfg.bt.chain,
                "bt: no block chaining and no inline lookup of indirect jumps");
  run->add_option("--bt-interp", cfg.bt.interp_groups,
                  std::string("bt: comma list of instruction groups to leave to the interpreter (") +
                      engine::bt_groups_help() + "; all = translator off)");
  run->add_option("--bt-cache-mb", cfg.bt.code_cache_mb, "bt: code cache size in MiB")
      ->capture_default_str();
  run->add_flag("!--bt-no-adaptive", cfg.bt.adaptive,
                "bt: do not retranslate instructions that keep taking the slow path");
  run->add_option("--bt-cold-visits", cfg.bt.cold_visits,
                  "bt: visits of a block the interpreter runs before it is translated (1-15)")
      ->check(CLI::Range(1, 15))
      ->capture_default_str();
  run->add_flag("!--bt-no-tiered", cfg.bt.tiered,
                "bt: translate a block the first time it runs (by default the interpreter runs "
                "its first visit: code that runs once costs less so)");
  run->add_flag("!--bt-no-flag-recipes", cfg.bt.flag_recipes,
                "bt: save the flags before a memory access instead of keeping them as the "
                "recipe of the register instruction that set them");
  run->add_flag("--bt-ras", cfg.bt.ras,
                "bt: translate a direct CALL/RET as host call/ret pairs (a return stack; measured "
                "slower than the jump cache's lookup on the hosts tried)");
  run->add_flag("!--bt-no-emit-templates", cfg.bt.emit_templates,
                "bt: encode every block exit with xbyak instead of copying a template encoded "
                "once (translation cost only; the code is the same)");
  run->add_flag("!--bt-no-emit-in-place", cfg.bt.emit_in_place,
                "bt: emit each block into a scratch buffer and copy it to the code cache "
                "(translation cost only)");
  run->add_flag("!--bt-eager-sites", cfg.bt.lazy_sites,
                "bt: make every memory access's callout site at translation instead of when its "
                "slow path first runs (records bigger; the code is the same but for the pointers)");
  run->add_flag("!--bt-no-inline-div", cfg.bt.inline_div,
                "bt: run DIV/IDIV through the semantics (a callout) instead of the host's "
                "instruction after inline checks for divide errors");
  run->add_flag("!--bt-no-fault-continue", cfg.bt.fault_continue,
                "bt: after a callout delivered a guest exception, leave to the dispatcher instead "
                "of going on into the handler's translated block");
  run->add_flag("!--bt-no-inline-x87", cfg.bt.inline_x87,
                "bt: run every x87 instruction through the semantics (a callout) instead of the "
                "host's x87 on the guest's registers after inline checks for the cases they handle");
  run->add_flag("!--bt-no-frame-checks", cfg.bt.frame_checks,
                "bt: check every [EBP/ESP + disp] memory operand in the soft TLB instead of once per "
                "block stretch where the register is unchanged (kernel code, processes outside the user window)");
  run->add_flag("!--bt-no-fastmem", cfg.bt.fastmem,
                "bt: with paging off, look memory operands up in the soft TLB instead of "
                "addressing guest RAM directly");
  run->add_flag("!--bt-no-user-window", cfg.bt.user_window,
                "bt: in user mode with paging on, look memory operands up in the soft TLB instead "
                "of addressing the host mapping of the guest's user pages (the user window)");
  run->add_option("--bt-user-window-claim", cfg.bt.user_window_claim,
                  "bt: instructions a process runs in user mode before it takes the user window "
                  "over (0: at once; short-lived processes pay less without it)")
      ->capture_default_str();
  run->add_option("--bt-user-window-cap", cfg.bt.user_window_cap,
                  "bt: pages the user window maps at most before it starts afresh (for testing "
                  "working sets larger than the window)")
      ->check(CLI::Range(u64(1), u64(1) << 20))
      ->capture_default_str();
  add_scope_option(run, "--bt-superblocks", cfg.bt.superblocks,
                   "bt: forward conditional branches inside a block as side exits: user (in "
                   "user-mode code; default), all, off");
  add_scope_option(run, "--bt-memo", cfg.bt.memo,
                   "bt: memory operands first compare with the page they last hit (no TLB load on "
                   "the address chain): user (in loops of user-mode code; default), all (every "
                   "block), off");
  run->add_flag("--bt-perf-map", cfg.bt.perf_map,
                "bt: write /tmp/perf-PID.map naming each translation by its guest address, "
                "for `perf report`");
  run->add_option("--debug-port", dports,
                  "PORT[=FILE]: record bytes the guest writes to I/O port PORT (hex 0x.. or "
                  "decimal) to FILE, or to standard output");
  run->add_flag("--deterministic", cfg.deterministic,
                "Derive time from retired instructions so runs repeat exactly");
  run->add_option("--trace", cfg.trace_file,
                  "Write an instruction trace with disassembly to FILE ('-' for stderr)");
  run->add_option("--max-insns", cfg.max_insns, "Stop after this many guest instructions");
  run->add_flag("--stats", stats, "Print statistics of what the VMM did at exit");
  run->add_flag("!--no-acpi", cfg.acpi,
                "A PC without ACPI: no PM1 registers, no ACPI tables (with --kernel), no power button "
                "for system_powerdown; the guest powers off by halting with interrupts off. By "
                "default the board has ACPI 1.0: PM1 at ports 0x600-0x605, SCI on IRQ 9, tables at "
                "0xE0000");
  run->add_flag("!--no-early-faults", cfg.early_faults,
                "interp and bt: deliver every guest exception through the semantics' C++ throw, "
                "also those an instruction's early check finds before it runs (divide errors, "
                "the #PF of a MOV's memory operand or a PUSH's stack write), which by default are delivered directly");
  run->add_flag("!--no-paravirt", cfg.paravirt,
                "No paravirtual interface: the guest sees a plain Pentium II. By default, on "
                "interp and bt, popek speaks KVM's guest ABI: CPUID 0x40000000 says "
                "\"KVMKVMKVM\", kvm-clock (MSRs 0x4b564d00/01 and 0x11/0x12, stable TSC: no "
                "calibration against the PIT), no-op port-0x80 delays, and VMCALL/VMMCALL "
                "hypercalls (KVM_HC_VAPIC_POLL_IRQ, KVM_HC_CLOCK_PAIRING; others -KVM_ENOSYS). "
                "Not provided: steal time, PV EOI, async page faults, PV spinlocks. On kvm "
                "the interface is KVM's own: popek lets the kvm-clock MSRs through to KVM and "
                "announces the features KVM supports (where KVM takes popek's CPUID); VMCALL "
                "is KVM's with or without it");
  // Paravirtual devices (virtio over PCI); see src/machine/virtio_board.h.
  std::vector<std::string> drives, netdevs;
  run->add_option("--drive", drives,
                  "A virtio-blk disk (repeatable; /dev/vda, vdb, ...): file=PATH[,format=raw|qcow2]"
                  "[,readonly=on][,cache=writeback|writethrough|unsafe][,serial=S]")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run->add_option("--netdev", netdevs,
                  "A virtio-net card (repeatable) on user-mode NAT (user[,hostfwd=tcp:[HOSTADDR]:PORT-"
                  "[GUESTADDR]:PORT]...[,mac=..]: guest 10.0.2.15, host 10.0.2.2, DNS 10.0.2.3) or a "
                  "TAP interface (tap,ifname=NAME). A VM on user networking can be saved and "
                  "migrated (DHCP lease and hostfwd rules go along; the guest's open TCP connections "
                  "through it do not, as libslirp does not carry them: they are reset after the switch); "
                  "one on TAP cannot")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run->add_flag("--rng", cfg.virtio.rng, "A virtio-rng entropy device fed from the host's getrandom");
  std::string incoming;
  std::optional<vmm::TcpAddress> incoming_tcp;
  run->add_option("--incoming", incoming,
                  "file:PATH: resume the VM saved in PATH (by the QMP command migrate with "
                  "\"uri\": \"file:PATH\") instead of booting. tcp:HOST:PORT: listen there (port 0 "
                  "picks one, printed) for one live migration (QMP migrate with \"uri\": "
                  "\"tcp:HOST:PORT\" on the source); the guest starts once the whole stream has "
                  "arrived and checked. Give the same command line as the saved VM's (RAM, disks, "
                  "devices; the engine may differ): a mismatch is an error naming it")
      ->type_name("file:PATH|tcp:HOST:PORT");
  std::vector<std::string> qmp_specs;
  run->add_option("--qmp", qmp_specs,
                  "A control socket speaking QMP, the QEMU Machine Protocol (repeatable): "
                  "unix:PATH[,server][,wait=off] (the file is made mode 0600 and removed at exit; "
                  "a stale one is replaced) or tcp:HOST:PORT[,server][,wait=off] (no "
                  "authentication: use 127.0.0.1; port 0 picks a free port, printed at start). "
                  "Commands: qmp_capabilities, query-version, query-commands, query-status, stop, "
                  "cont, system_reset (rebuilds the machine), quit, query-popek-stats, migrate (to "
                  "file:PATH: saves the VM, which stays stopped; to tcp:HOST:PORT: live migration to a "
                  "popek run --incoming tcp:...), query-migrate, migrate_cancel, migrate-set-parameters "
                  "(downtime-limit, max-bandwidth), query-migrate-parameters; "
                  "system_powerdown (presses the ACPI power button; an error with --no-acpi); "
                  "x-popek-set-engine {\"engine\": interp|bt|kvm} (the guest goes on on that engine; a "
                  "schedule or the hybrid policy stops), x-popek-query-engine. "
                  "Events: STOP, RESUME, RESET, SHUTDOWN, POWERDOWN, MIGRATION. Try: socat - UNIX-CONNECT:PATH")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run->footer(
      "The serial console (COM1) is the terminal: Ctrl-A X quits, Ctrl-A S prints a status line.\n"
      "Exit status: 0 power-off or quit on the control socket, 2 reset by the guest, 4 triple\n"
      "fault, 6 halted with nothing to wake the CPU, 8 instruction limit, 10 stopped by a signal\n"
      "or Ctrl-A X, 125 bad input or error; the isa-debug-exit port 0xF4 ends the run with\n"
      "(value << 1) | 1.");

  CLI::App* kvm_info = app.add_subcommand(
      "kvm-info", "Whether the kvm engine can run here and how fast (a short calibration); exit "
                  "status 0 usable, 77 not usable (the reason is printed)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 125;
  }
  try {
    if (*kvm_info) {
      engine::KvmProbe p = engine::kvm_probe();
      if (!p.usable) {
        std::printf("kvm: not usable: %s\n", p.why.c_str());
        return 77;
      }
      std::printf("kvm: usable (%s); %.1f MIPS (dec/jnz loop, 32-bit protected mode), %.1f us per port "
                  "I/O exit, TSC scaling %s\n",
                  p.flavour.c_str(), p.mips, p.exit_us, p.tsc_control ? "yes" : "no");
      return 0;
    }
    if (*run) {
      cfg.memory = parse_size(mem);
      if (!incoming.empty()) {
        if (incoming.rfind("file:", 0) == 0 && incoming.size() > 5) cfg.incoming = incoming.substr(5);
        else if (incoming.rfind("tcp:", 0) == 0) incoming_tcp = vmm::parse_tcp_uri(incoming, "--incoming");
        else throw Error("--incoming " + incoming + ": expected file:PATH or tcp:HOST:PORT");
      }
      for (const auto& d : drives) cfg.virtio.drives.push_back(machine::parse_drive(d));
      for (const auto& n : netdevs) cfg.virtio.netdevs.push_back(net::parse_netdev(n));
      for (const auto& d : dports) {
        machine::DebugPortSpec spec;
        std::string port = d, file;
        if (auto eq = d.find('='); eq != std::string::npos) {
          port = d.substr(0, eq);
          file = d.substr(eq + 1);
        }
        char* end = nullptr;
        unsigned long p = std::strtoul(port.c_str(), &end, 0);
        if (port.empty() || *end || p > 0xFFFF) throw Error("--debug-port: bad port '" + port + "'");
        spec.port = u16(p);
        spec.file = file;
        cfg.debug_ports.push_back(spec);
      }
      if (cfg.firmware.empty() && cfg.kernel.empty()) {
        // The default guest fetched by scripts/fetch-guest.sh.
        const char* env = std::getenv("POPEK_CACHE");
        std::string cache = env ? env : "cache/guest";
        cfg.kernel = cache + "/vmlinuz";
        cfg.initrd = cache + "/initrd.img";
        if (cfg.append.empty()) cfg.append = "console=ttyS0";
        FILE* f = std::fopen(cfg.kernel.c_str(), "rb");
        if (!f) throw Error("no --kernel or --firmware given and no default guest at " + cfg.kernel +
                            " (run scripts/fetch-guest.sh, or set POPEK_CACHE)");
        std::fclose(f);
      }
      return cmd_run(cfg, stats, qmp_specs, incoming_tcp);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "popek: %s\n", e.what());
    return 125;
  }
  return 0;
}
