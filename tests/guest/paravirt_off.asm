; Without the paravirtual interface (--no-paravirt), on every engine: no
; "hypervisor present" bit and no KVM signature in CPUID, and the four
; kvm-clock MSRs #GP on RDMSR and WRMSR (on kvm popek's MSR filter keeps them
; from KVM). The hypercall instruction is not checked: interp and bt raise
; #UD, KVM answers it itself (docs/paravirt.md).
%include "harness.inc"

%define GPS 0x5000                      ; #GP count

test_main:
    mov eax, 13
    mov ebx, gp_handler
    mov ecx, 0x8E
    mov dx, SEL_CODE0
    call set_gate
    call load_idt
    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x4b4d564b                 ; "KVMK"
    jne .nosig
    FAIL 1
.nosig:
    mov eax, 1
    cpuid
    bt ecx, 31
    jnc .nohv
    FAIL 2
.nohv:
    mov dword [GPS], 0
    mov esi, msrs
.next:
    mov ecx, [esi]
    test ecx, ecx
    jz .done
    mov eax, 0x5101                     ; kvm-clock on at 0x5100, if it were there
    xor edx, edx
    wrmsr                               ; #GP: skipped by the handler
    rdmsr                               ; #GP
    add esi, 4
    jmp .next
.done:
    CHECK_EQ dword [GPS], 8, 3
    CHECK_EQ dword [0x5100], 0, 4       ; nothing written there
    PASS

msrs: dd 0x11, 0x12, 0x4b564d00, 0x4b564d01, 0

; #GP: count it and step over the 2-byte RDMSR/WRMSR.
gp_handler:
    inc dword [GPS]
    add esp, 4                          ; error code
    add dword [esp], 2
    iretd
%include "tail.inc"
