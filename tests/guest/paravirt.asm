; KVM's paravirtual interface as a freestanding guest sees it (popek's
; default; x86/paravirt.h): the CPUID signature and features, kvm-clock's
; structures written into RAM by the VMM (and, under --lockstep, by the
; shadow too), and hypercall results through VMCALL and VMMCALL.
%include "harness.inc"

%define PVTI 0x5000
%define WALL 0x5100

test_main:
    mov eax, 0x40000000
    cpuid
    CHECK_EQ eax, 0x40000001, 1
    CHECK_EQ ebx, 0x4b4d564b, 2         ; "KVMK"
    CHECK_EQ ecx, 0x564b4d56, 3         ; "VMKV"
    CHECK_EQ edx, 0x0000004d, 4         ; "M\0\0\0"
    mov eax, 0x40000001
    cpuid
    CHECK_EQ eax, 0x0100000B, 5         ; CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, STABLE_BIT
    mov eax, 1
    cpuid
    bt ecx, 31
    jc .hv
    FAIL 6
.hv:
    ; kvm-clock on: the structure appears at PVTI.
    mov dword [PVTI], 0xFFFFFFFF        ; junk, odd version
    mov ecx, 0x4b564d01
    mov eax, PVTI | 1
    xor edx, edx
    wrmsr
    mov eax, [PVTI]
    test eax, 1
    jz .even
    FAIL 7
.even:
    CHECK_EQ dword [PVTI + 24], 0x80000000, 8    ; tsc_to_system_mul
    movzx eax, byte [PVTI + 28]
    CHECK_EQ eax, 1, 9                           ; tsc_shift
    movzx eax, byte [PVTI + 29]
    CHECK_EQ eax, 1, 10                          ; flags: PVCLOCK_TSC_STABLE_BIT
    ; system_time + (rdtsc - tsc_timestamp) moves forward with the TSC.
    rdtsc
    sub eax, [PVTI + 8]
    sbb edx, [PVTI + 12]
    CHECK_EQ edx, 0, 11                 ; less than 4 s since the update
    ; read back
    mov ecx, 0x4b564d01
    rdmsr
    CHECK_EQ eax, PVTI | 1, 12
    ; the wall clock
    mov ecx, 0x4b564d00
    mov eax, WALL
    xor edx, edx
    wrmsr
    CHECK_EQ dword [WALL], 2, 13        ; version
    cmp dword [WALL + 4], 1700000000    ; sec: after 2023
    ja .wall_ok
    FAIL 14
.wall_ok:
    cmp dword [WALL + 8], 1000000000    ; nsec
    jb .nsec_ok
    FAIL 15
.nsec_ok:
    ; hypercalls
    mov eax, 1                          ; KVM_HC_VAPIC_POLL_IRQ
    mov ebx, 0x5555
    vmcall
    CHECK_EQ eax, 0, 16
    CHECK_EQ ebx, 0x5555, 17
    mov eax, 0x1234                     ; unknown: -KVM_ENOSYS
    vmcall
    CHECK_EQ eax, -1000, 18
    mov eax, 11                         ; KVM_HC_SCHED_YIELD: not announced
    vmmcall
    CHECK_EQ eax, -1000, 19
    mov eax, 1
    vmmcall
    CHECK_EQ eax, 0, 20
    ; off again: nothing more is written
    mov ecx, 0x4b564d01
    xor eax, eax
    xor edx, edx
    wrmsr
    mov dword [PVTI], 0x77
    mov ecx, 0x10                       ; a TSC write would rewrite an enabled clock
    xor eax, eax
    wrmsr
    CHECK_EQ dword [PVTI], 0x77, 21
    PASS
%include "tail.inc"
