; Virtualization nanobenchmarks (issue 22; after Adams & Agesen, ASPLOS 2006):
; a freestanding guest (a 64 KiB ROM run with `popek run --firmware`, built on
; tests/guest/harness.inc) that times each virtualization-sensitive operation
; in a loop with RDTSC and reports the guest TSC ticks on the debug port 0xE9.
; bench/nano/run.py assembles it, runs it on each engine and turns ticks into
; ns with the TSC rate this program measures against the PIT (below).
;
; Build options (nasm -D):
;   SCALE  iterations in permille of the base counts below (default 1000; the
;          smoke test and the kvm engine, which is slow here, use less)
;   SKIP   bit mask of benchmarks not to run (run.py sets it after one of them
;          killed the guest, to measure the rest)
;
; Output protocol, one line each (numbers in hex):
;   nano-begin SCALE
;   nano-cal PIT_TICKS TSC_TICKS        TSC ticks while PIT counter 2 counted
;                                       PIT_TICKS at 1193182 Hz (or nano-cal-fail);
;                                       CAL_RUNS times
;   nano-start NAME                     the benchmark starts (a guest that dies
;                                       after this died in NAME)
;   nano-result NAME OPS TICKS          OPS operations took TICKS TSC ticks
;   nano-na NAME REASON                 cannot run here, and why
;   nano-skip NAME                      left out by SKIP
;   nano-fault VECTOR ERR EIP CS        an unexpected exception (then FAIL)
;   nano-end
; then PASS (exit status 1). A result that fails its own check is FAIL.
;
; What each one does (ring 0 unless said; interrupts off throughout):
;   loop      the empty `dec ecx; jnz` loop (the overhead in every other loop)
;   callret   CALL to a RET                          (x10 per loop iteration)
;   cpuid     CPUID leaf 0                           (x10)
;   rdtsc     RDTSC                                  (x10)
;   in        IN AL, 0x61 (port B: PIT counter 2 OUT, refresh toggle) (x10)
;   crwr      MOV CR0, EAX with CR0's own value      (x10)
;   hypercall VMCALL KVM_HC_VAPIC_POLL_IRQ (KVM's paravirtual ABI; n/a
;             without it)                            (x10)
;   divzero   ring 3: DIV by zero; the #DE handler skips the DIV and IRETs
;   syscall   ring 3: INT 0x80 through a DPL-3 trap gate, handler IRETs
;   sysenter  ring 3: SYSENTER, handler SYSEXITs
;   -- with paging on (identity map, 4 KiB pages; n/a where paging cannot be
;      enabled: MOV CR0 with PG=1 is probed with a #GP handler) --
;   cr3       MOV CR3, EAX with CR3's own value (flushes the TLB) (x10)
;   invlpg    INVLPG of a mapped page                (x10)
;   pgfault   ring 3: a read of a not-present page; the #PF handler maps it
;             (and unmaps the other of two pages) and the read is retried;
;             the loop alternates between the two pages, so every read faults
;   ptemod    a PTE changed (its frame toggled between two pages), INVLPG, and
;             a read through it (checked: the reads alternate between frames)
%include "harness.inc"

%ifndef SCALE
%define SCALE 1000
%endif
%ifndef SKIP
%define SKIP 0
%endif
; iterations for a base count, at least 1
%define ITERS(b) (((b) * SCALE + 999) / 1000)
%define UNROLL 10

; data (below the GDT at 0x1000)
T0_LO    equ 0x500
T0_HI    equ 0x504
DT_LO    equ 0x508
DT_HI    equ 0x50C
KSP      equ 0x510      ; ring-0 ESP saved by user_call
PROBE    equ 0x514      ; 1: a #GP now is the paging probe's
PF_COUNT equ 0x518
PAGING   equ 0x51C      ; 1 once paging is on
CHECK    equ 0x520      ; a benchmark's own check value
%define TSS0 0x3000
%define ESP0 0x88000
%define USER_ESP 0x80000
%define PD 0x10000
%define PT 0x11000
%define PGA 0x200000    ; pgfault's two pages
%define PGB 0x201000
%define PTEMOD_VA 0x202000
%define FRAME1 0x203000 ; ptemod's two frames (FRAME1 ^ FRAME2 = 0x7000)
%define FRAME2 0x204000
%define CAL_COUNT 59659 ; PIT ticks in 50 ms (1193182 Hz / 20)
%define CAL_RUNS 5      ; calibrations (run.py takes the shortest: a loaded host
                        ; can stall the guest between the PIT's end and the read)

%macro T_START 0
    rdtsc
    mov [T0_LO], eax
    mov [T0_HI], edx
%endmacro
%macro T_STOP 0
    rdtsc
    sub eax, [T0_LO]
    sbb edx, [T0_HI]
    mov [DT_LO], eax
    mov [DT_HI], edx
%endmacro
; ring-3 entry of a user routine: flat ring-3 data segments
%macro USER_DS 0
    mov ax, SEL_DATA3
    mov ds, ax
    mov es, ax
%endmacro
; na REASON: the routine cannot run here
%macro NA 1
    jmp %%after
%%s: db %1, 0
%%after:
    mov ebx, %%s
    xor eax, eax
    ret
%endmacro

test_main:
    PRINT {"nano-begin "}
    mov eax, SCALE
    call print_hex
    PRINT {10}
    call setup_idt
    call setup_tss
    mov ecx, CAL_RUNS
.cal:
    push ecx
    call calibrate
    pop ecx
    loop .cal
    mov esi, benchmarks
.next:
    mov eax, [esi]
    test eax, eax
    jz .done
    push esi
    mov ebx, [esi + 4]          ; name
    mov ecx, [esi]              ; bit
    test ecx, SKIP
    jz .run
    PRINT {"nano-skip "}
    mov esi, ebx
    call print
    PRINT {10}
    jmp .after
.run:
    PRINT {"nano-start "}
    push ebx
    mov esi, ebx
    call print
    PRINT {10}
    pop ebx
    mov esi, [esp]
    push ebx
    call [esi + 8]              ; EAX = ops, or 0 and EBX = reason
    pop esi                     ; name
    test eax, eax
    jz .na
    PRINT {"nano-result "}
    call print
    PRINT {" "}
    call print_hex
    PRINT {" "}
    mov eax, [DT_HI]
    call print_hex
    mov eax, [DT_LO]
    call print_hex
    PRINT {10}
    jmp .after
.na:
    PRINT {"nano-na "}
    call print
    PRINT {" "}
    mov esi, ebx
    call print
    PRINT {10}
.after:
    pop esi
    add esi, 12
    jmp .next
.done:
    PRINT {"nano-end", 10}
    ret

; bit, name, routine
benchmarks:
    dd 1 << 0, n_loop, b_loop
    dd 1 << 1, n_callret, b_callret
    dd 1 << 2, n_cpuid, b_cpuid
    dd 1 << 3, n_rdtsc, b_rdtsc
    dd 1 << 4, n_in, b_in
    dd 1 << 5, n_crwr, b_crwr
    dd 1 << 6, n_hypercall, b_hypercall
    dd 1 << 7, n_divzero, b_divzero
    dd 1 << 8, n_syscall, b_syscall
    dd 1 << 9, n_sysenter, b_sysenter
    dd 1 << 10, n_cr3, b_cr3
    dd 1 << 11, n_invlpg, b_invlpg
    dd 1 << 12, n_pgfault, b_pgfault
    dd 1 << 13, n_ptemod, b_ptemod
    dd 0
n_loop: db "loop", 0
n_callret: db "callret", 0
n_cpuid: db "cpuid", 0
n_rdtsc: db "rdtsc", 0
n_in: db "in", 0
n_crwr: db "crwr", 0
n_hypercall: db "hypercall", 0
n_divzero: db "divzero", 0
n_syscall: db "syscall", 0
n_sysenter: db "sysenter", 0
n_cr3: db "cr3", 0
n_invlpg: db "invlpg", 0
n_pgfault: db "pgfault", 0
n_ptemod: db "ptemod", 0

; ---------------------------------------------------------------- set-up
setup_idt:
    ; every exception vector to its stub (an unexpected one ends the run)
    xor eax, eax
.l: mov ebx, eax
    shl ebx, 4
    add ebx, exc_stubs
    mov ecx, 0x8E
    mov edx, SEL_CODE0
    call set_gate
    inc eax
    cmp eax, 32
    jb .l
    mov eax, 0                  ; #DE: skip the DIV
    mov ebx, de_handler
    call set_gate
    mov eax, 13                 ; #GP: the paging probe, else unexpected
    mov ebx, gp_handler
    call set_gate
    mov eax, 14
    mov ebx, pf_handler
    call set_gate
    mov eax, 0x80               ; the system call: DPL-3 trap gate
    mov ebx, syscall_handler
    mov ecx, 0xEF
    call set_gate
    call load_idt
    ret

setup_tss:
    mov edi, TSS0
    mov ecx, 0x68 / 4
    xor eax, eax
    rep stosd
    mov dword [TSS0 + 4], ESP0
    mov dword [TSS0 + 8], SEL_DATA0
    mov word [TSS0 + 0x66], 0x68
    mov eax, SEL_TSS
    mov ebx, TSS0
    call set_tss
    mov ax, SEL_TSS
    ltr ax
    ret

; The guest TSC's rate: PIT counter 2 in mode 0 counts CAL_COUNT ticks
; (50 ms at 1193182 Hz) while the TSC is read before and after; OUT2 (port
; 0x61 bit 5) goes high at the end. The gate is raised first, the speaker off,
; as Linux's pit_calibrate_tsc does.
calibrate:
    in al, 0x61
    and al, 0xFC
    or al, 1
    out 0x61, al
    mov al, 0xB0                ; counter 2, low then high byte, mode 0, binary
    out 0x43, al
    mov al, CAL_COUNT & 0xFF
    out 0x42, al
    mov al, CAL_COUNT >> 8
    out 0x42, al
    T_START
    mov ecx, 0x10000000         ; give up after that many polls
.w: in al, 0x61
    test al, 0x20
    jnz .hi
    dec ecx
    jnz .w
    PRINT {"nano-cal-fail PIT counter 2 OUT never went high", 10}
    ret
.hi:
    T_STOP
    PRINT {"nano-cal "}
    mov eax, CAL_COUNT
    call print_hex
    PRINT {" "}
    mov eax, [DT_HI]
    call print_hex
    mov eax, [DT_LO]
    call print_hex
    PRINT {10}
    ret

; user_call: EBX = a ring-3 routine, entered with IRET (IF=0, IOPL 0) on the
; ring-3 stack; it ends with a jump to user_exit, whose HLT raises #GP, and
; the #GP handler comes back here. (Not INT n: kvm_pvm fails to deliver INT n
; from ring 3, while it delivers exceptions; so ring-3 benchmarks other than
; the INT 0x80 one can run there.)
user_call:
    pushad
    mov [KSP], esp
    push dword SEL_DATA3
    push dword USER_ESP
    push dword 0x002
    push dword SEL_CODE3
    push ebx
    iret
user_exit:
    hlt                         ; ring 3: #GP
user_return:
    mov ax, SEL_DATA0
    mov ds, ax
    mov es, ax
    mov esp, [KSP]
    popad
    ret

; Paging: identity map of 0-4 MiB with 4 KiB user pages, pgfault's page A not
; present, ptemod's page at FRAME1. Turned on with a #GP handler armed: where
; 32-bit paging is refused (kvm_pvm) PAGING stays 0.
enable_paging:
    cmp dword [PAGING], 0
    jne .ret
    mov edi, PT
    mov eax, 0x007              ; present | RW | user
    mov ecx, 1024
.fill:
    stosd
    add eax, 0x1000
    loop .fill
    and dword [PT + (PGA >> 12) * 4], ~1
    mov dword [PT + (PTEMOD_VA >> 12) * 4], FRAME1 | 7
    mov dword [FRAME1], FRAME1 >> 12
    mov dword [FRAME2], FRAME2 >> 12
    mov edi, PD
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PD], PT | 7
    mov eax, PD
    mov cr3, eax
    mov dword [PROBE], 1
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax                ; 3 bytes: the #GP handler skips them
    cmp dword [PROBE], 2
    mov dword [PROBE], 0
    je .ret
    mov dword [PAGING], 1
.ret:
    ret

; ---------------------------------------------------------------- handlers
align 16
exc_stubs:
%assign v 0
%rep 32
    push dword v
    jmp near unexpected
    align 16
%assign v v + 1
%endrep
; [esp] vector, then the CPU's frame (with an error code for 8, 10-14, 17)
unexpected:
    mov ax, SEL_DATA0
    mov ds, ax
    mov es, ax
    PRINT {"nano-fault "}
    mov eax, [esp]
    call print_hex
    PRINT {" "}
    mov eax, [esp + 4]
    call print_hex
    PRINT {" "}
    mov eax, [esp + 8]
    call print_hex
    PRINT {" "}
    mov eax, [esp + 12]
    call print_hex
    PRINT {10}
    FAIL 0x70

de_handler:
    add dword [esp], 2          ; DIV r32 is 2 bytes
    iret

gp_handler:
    cmp dword [esp + 4], user_exit
    je user_return              ; a user routine has finished
    cmp dword [PROBE], 1
    jne exc_stubs + 13 * 16
    mov dword [PROBE], 2
    add dword [esp + 4], 3      ; skip MOV CR0, EAX
    add esp, 4
    iret

; pgfault: CR2 in page A or B; map it, unmap the other, retry.
pf_handler:
    push eax
    mov eax, cr2
    shr eax, 12
    cmp eax, PGA >> 12
    je .ours
    cmp eax, PGB >> 12
    je .ours
    pop eax
    jmp exc_stubs + 14 * 16
.ours:
    or dword [PT + eax * 4], 1
    xor eax, 1                  ; the other page (A and B differ in bit 12 only)
    and dword [PT + eax * 4], ~1
    shl eax, 12
    invlpg [eax]
    inc dword [PF_COUNT]
    pop eax
    add esp, 4
    iret

syscall_handler:
    iret

sysenter_handler:
    sysexit

; ---------------------------------------------------------------- benchmarks
; Each returns EAX = operations timed (T0/DT hold the ticks), or EAX = 0 and
; EBX = why it cannot run here.

b_loop:
    mov ecx, ITERS(1000000)
    T_START
.l: dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(1000000)
    ret

b_callret:
    mov ecx, ITERS(20000)
    T_START
.l:
%rep UNROLL
    call .f
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(20000) * UNROLL
    ret
.f: ret

b_cpuid:
    mov ebp, ITERS(5000)
    T_START
.l:
%rep UNROLL
    xor eax, eax
    cpuid
%endrep
    dec ebp
    jnz .l
    T_STOP
    mov eax, ITERS(5000) * UNROLL
    ret

b_rdtsc:
    mov ecx, ITERS(10000)
    T_START
.l:
%rep UNROLL
    rdtsc
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(10000) * UNROLL
    ret

b_in:
    mov ecx, ITERS(5000)
    T_START
.l:
%rep UNROLL
    in al, 0x61
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(5000) * UNROLL
    ret

b_crwr:
    mov ecx, ITERS(5000)
    mov eax, cr0
    mov ebx, eax
    T_START
    mov eax, ebx
.l:
%rep UNROLL
    mov cr0, eax
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(5000) * UNROLL
    ret

b_hypercall:
    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x4b4d564b         ; "KVMK"
    jne .none
    cmp ecx, 0x564b4d56         ; "VMKV"
    jne .none
    mov ebp, ITERS(5000)
    T_START
.l:
%rep UNROLL
    mov eax, 1                  ; KVM_HC_VAPIC_POLL_IRQ
    vmcall
%endrep
    dec ebp
    jnz .l
    mov edi, eax                ; the last call's result
    T_STOP
    test edi, edi
    jnz .bad
    mov eax, ITERS(5000) * UNROLL
    ret
.bad:
    PRINT {"nano-error hypercall: KVM_HC_VAPIC_POLL_IRQ returned "}
    mov eax, edi
    call print_hex
    PRINT {10}
    FAIL 0x71
.none:
    NA "no KVM paravirtual interface (CPUID 0x40000000 has no KVMKVMKVM signature)"

b_divzero:
    mov ebx, u_divzero
    call user_call
    mov eax, ITERS(20000)
    ret
u_divzero:
    USER_DS
    mov ecx, ITERS(20000)
    xor ebx, ebx
    T_START
.l: xor edx, edx
    mov eax, 1
    div ebx                     ; #DE; the handler skips it
    dec ecx
    jnz .l
    T_STOP
    jmp user_exit

b_syscall:
    mov ebx, u_syscall
    call user_call
    mov eax, ITERS(20000)
    ret
u_syscall:
    USER_DS
    mov ecx, ITERS(20000)
    T_START
.l: int 0x80
    dec ecx
    jnz .l
    T_STOP
    jmp user_exit

b_sysenter:
    mov ecx, 0x174              ; SYSENTER_CS: CS, CS+8 = SS; SYSEXIT: CS+16, CS+24
    mov eax, SEL_CODE0
    xor edx, edx
    wrmsr
    mov ecx, 0x175              ; SYSENTER_ESP
    mov eax, ESP0
    wrmsr
    mov ecx, 0x176              ; SYSENTER_EIP
    mov eax, sysenter_handler
    wrmsr
    mov ebx, u_sysenter
    call user_call
    mov eax, ITERS(20000)
    ret
u_sysenter:
    USER_DS
    mov ebp, ITERS(20000)
    T_START
.l: mov ecx, esp
    mov edx, .back
    sysenter
.back:
    dec ebp
    jnz .l
    T_STOP
    jmp user_exit

%macro NEED_PAGING 0
    call enable_paging
    cmp dword [PAGING], 1
    je %%on
    NA "paging unavailable: MOV CR0 setting PG (32-bit, no PAE) raised #GP"
%%on:
%endmacro

b_cr3:
    NEED_PAGING
    mov ecx, ITERS(2000)
    mov ebx, cr3
    T_START
    mov eax, ebx
.l:
%rep UNROLL
    mov cr3, eax
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(2000) * UNROLL
    ret

b_invlpg:
    NEED_PAGING
    mov ecx, ITERS(5000)
    T_START
.l:
%rep UNROLL
    invlpg [0x100000]
%endrep
    dec ecx
    jnz .l
    T_STOP
    mov eax, ITERS(5000) * UNROLL
    ret

b_pgfault:
    NEED_PAGING
    mov dword [PF_COUNT], 0
    mov ebx, u_pgfault
    call user_call
    mov eax, [PF_COUNT]
    CHECK_EQ eax, ITERS(10000) * 2, 0x72
    ret
u_pgfault:
    USER_DS
    mov ecx, ITERS(10000)
    T_START
.l: mov eax, [PGA]              ; faults: A is not present (B is)
    mov eax, [PGB]              ; faults: the handler unmapped B
    dec ecx
    jnz .l
    T_STOP
    jmp user_exit

b_ptemod:
    NEED_PAGING
    mov ecx, ITERS(10000) * 2
    xor ebx, ebx
    T_START
.l: xor dword [PT + (PTEMOD_VA >> 12) * 4], FRAME1 ^ FRAME2
    invlpg [PTEMOD_VA]
    add ebx, [PTEMOD_VA]        ; FRAME2 >> 12, FRAME1 >> 12, ...
    dec ecx
    jnz .l
    T_STOP
    CHECK_EQ ebx, ITERS(10000) * ((FRAME1 >> 12) + (FRAME2 >> 12)), 0x73
    mov eax, ITERS(10000) * 2
    ret
%include "tail.inc"
