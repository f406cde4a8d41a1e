; KVM's paravirtual interface as a guest sees it on the kvm engine, where the
; real KVM provides it (popek lets the kvm-clock MSRs through its MSR filter
; and VMCALL is KVM's own; docs/paravirt.md, "On the kvm engine"). Unlike
; paravirt.asm (interp, bt) nothing here is popek's exact value: the pvclock
; structure is KVM's, for the TSC the guest reads there, so the checks are
; the ABI's properties: the MSR writes succeed, the version is even, the
; structure describes this TSC (RDTSC - tsc_timestamp is small, a plausible
; TSC frequency), the time it gives never goes back, the wall clock is
; filled in, and KVM's hypercall answers.
;
; CPUID: where KVM took popek's CPUID (KVM_SET_CPUID2) the KVM signature must
; be there with a subset of popek's features that includes CLOCKSOURCE2;
; where KVM refuses it (kvm_pvm) the guest sees KVM's own CPUID and the test
; says so and goes on (the MSRs and VMCALL work regardless of CPUID, as KVM
; does not enforce the PV CPUID there). kvm_test checks the leaves where the
; CPUID can be set.
%include "harness.inc"

%define PVTI 0x5000
%define WALL 0x5100
%define STUB 0x6000                     ; the hypercall in RAM (KVM may patch VMCALL <-> VMMCALL)
%define NOHC 0x6100                     ; 1: the hypercall is not tried

test_main:
    mov eax, 13                         ; #GP: an MSR KVM refused
    mov ebx, gp_handler
    mov ecx, 0x8E
    mov dx, SEL_CODE0
    call set_gate
    mov eax, 6                          ; #UD: the hypercall instruction refused
    mov ebx, ud_handler
    call set_gate
    call load_idt

    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x4b4d564b                 ; "KVMK"
    jne .own_cpuid
    CHECK_EQ ecx, 0x564b4d56, 1         ; "VMKV"
    CHECK_EQ edx, 0x0000004d, 2         ; "M\0\0\0"
    mov eax, 0x40000001
    cpuid
    PRINT {"CPUID: KVM signature, features "}
    call print_hex
    PRINT {10}
    test eax, ~0x0100000B               ; only what popek's model has
    jz .subset
    FAIL 3
.subset:
    test eax, 8                         ; CLOCKSOURCE2 (the MSRs below)
    jnz .cs2
    FAIL 4
.cs2:
    mov eax, 1
    cpuid
    bt ecx, 31                          ; hypervisor present
    jc .msr
    FAIL 5
.own_cpuid:
    PRINT {"CPUID: no KVM signature at 0x40000000: this KVM's own CPUID (popek's could not be set)", 10}
    mov byte [NOHC], 1

.msr:
    ; kvm-clock on: KVM fills in the structure (before the guest runs on).
    mov dword [PVTI], 0xFFFFFFFF        ; junk, odd version
    mov dword [PVTI + 24], 0
    mov ecx, 0x4b564d01
    mov eax, PVTI | 1
    xor edx, edx
    wrmsr
    mov eax, [PVTI]
    PRINT {"pvclock version "}
    call print_hex
    test eax, 1
    jz .even
    FAIL 7
.even:
    PRINT {", mul "}
    mov eax, [PVTI + 24]
    call print_hex
    PRINT {", shift "}
    movsx eax, byte [PVTI + 28]
    call print_hex
    PRINT {", flags "}
    movzx eax, byte [PVTI + 29]
    call print_hex
    PRINT {" (1: TSC_STABLE)", 10}
    cmp dword [PVTI + 24], 0
    jne .mul_ok
    FAIL 8
.mul_ok:
    ; The structure describes the TSC the guest reads: less than 2^32 ticks
    ; since tsc_timestamp (popek's own structure, for its 1 GHz virtual TSC,
    ; would not).
    rdtsc
    sub eax, [PVTI + 8]
    sbb edx, [PVTI + 12]
    CHECK_EQ edx, 0, 9
    ; A plausible TSC frequency: 10^9 ticks are 0.1 s .. 10 s.
    mov eax, 1000000000
    xor edx, edx
    call pv_scale
    PRINT {"10^9 TSC ticks = "}
    call print_hex
    PRINT {" ns", 10}
    test edx, edx
    jz .f1
    cmp edx, 2                          ; < 2^33 ns (8.6 s)
    jb .f2
    FAIL 10
.f1:
    cmp eax, 100000000
    jae .f2
    FAIL 10
.f2:
    ; system_time: the VirtualClock's ns since the machine started (KVM_SET_CLOCK),
    ; or KVM's since the VM was made: < 2^36 ns (68 s) either way.
    cmp dword [PVTI + 20], 16
    jb .st_ok
    FAIL 11
.st_ok:
    ; The time it gives never goes back and moves on.
    call pv_now
    mov [0x5200], eax
    mov [0x5204], edx
    mov ecx, 2000
.mono:
    push ecx
    call pv_now
    pop ecx
    cmp edx, [0x5204]
    ja .later
    jb .back
    cmp eax, [0x5200]
    jae .later
.back:
    FAIL 12
.later:
    mov [0x5200], eax
    mov [0x5204], edx
    loop .mono
    call pv_now
    sub eax, [PVTI + 16]
    sbb edx, [PVTI + 20]
    or eax, edx
    jnz .moved
    FAIL 13
.moved:
    ; read back
    mov ecx, 0x4b564d01
    rdmsr
    CHECK_EQ eax, PVTI | 1, 14
    ; the wall clock
    mov dword [WALL], 0xFFFFFFFF
    mov ecx, 0x4b564d00
    mov eax, WALL
    xor edx, edx
    wrmsr
    mov eax, [WALL]
    test eax, 1
    jz .wv
    FAIL 15
.wv:
    cmp dword [WALL + 4], 1700000000    ; sec: after 2023
    ja .wall_ok
    FAIL 16
.wall_ok:
    cmp dword [WALL + 8], 1000000000    ; nsec
    jb .nsec_ok
    FAIL 17
.nsec_ok:
    ; hypercalls, from RAM: VMCALL; RET. Not where the CPUID is KVM's own
    ; (kvm_pvm, the one KVM known to refuse popek's CPUID): there VMCALL and
    ; VMMCALL never return (the vCPU spins inside KVM without an exit;
    ; docs/kvm.md).
    cmp byte [NOHC], 0
    je .hc
    PRINT {"hypercall not tried: this KVM's own CPUID (kvm_pvm: VMCALL does not return)", 10}
    jmp .off
.hc:
    mov dword [STUB], 0xC3C1010F
    mov eax, 0x1234                     ; unknown: -KVM_ENOSYS
    call STUB
    CHECK_EQ eax, -1000, 18
    mov eax, 1                          ; KVM_HC_VAPIC_POLL_IRQ: 0
    mov ebx, 0x5555
    call STUB
    CHECK_EQ eax, 0, 19
    CHECK_EQ ebx, 0x5555, 20
.off:
    ; off again
    mov ecx, 0x4b564d01
    xor eax, eax
    xor edx, edx
    wrmsr
    rdmsr
    CHECK_EQ eax, 0, 21
    PASS

; pv_now: EDX:EAX = the pvclock time (ns) now, by the guest's protocol (a
; consistent copy: the same even version before and after).
pv_now:
    push ebx
.again:
    mov ebx, [PVTI]
    test ebx, 1
    jnz .again
    rdtsc
    sub eax, [PVTI + 8]
    sbb edx, [PVTI + 12]
    call pv_scale
    add eax, [PVTI + 16]
    adc edx, [PVTI + 20]
    cmp ebx, [PVTI]
    jne .again
    pop ebx
    ret

; pv_scale: EDX:EAX = TSC ticks -> ns: (ticks shifted by tsc_shift) * mul >> 32.
pv_scale:
    push ecx
    push esi
    push edi
    movsx ecx, byte [PVTI + 28]
    test ecx, ecx
    js .right
    shld edx, eax, cl
    shl eax, cl
    jmp .mul
.right:
    neg ecx
    shrd eax, edx, cl
    shr edx, cl
.mul:
    mov esi, edx                        ; high half
    mul dword [PVTI + 24]               ; low * mul
    mov edi, edx
    mov eax, esi
    mul dword [PVTI + 24]               ; high * mul
    add eax, edi
    adc edx, 0
    pop edi
    pop esi
    pop ecx
    ret

gp_handler:
    PRINT {"#GP: KVM refused the MSR", 10}
    FAIL 30
ud_handler:
    PRINT {"#UD: the hypercall instruction was refused", 10}
    FAIL 31
%include "tail.inc"
