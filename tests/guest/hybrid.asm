; Phases for the hybrid engine (--engine hybrid): two exit-heavy stretches
; (port I/O in a tight loop: every access an exit on kvm) each followed by a
; compute stretch (registers and memory only, no exits), then a checksum of
; everything. The output does not depend on the engine or on where the
; engine changed (hybrid_test.sh compares it with the interpreter's).
%include "harness.inc"

%define IO_ROUNDS 20000
%define COMPUTE_ROUNDS 100000

test_main:
    PRINT {"hybrid: start", 10}
    mov eax, 0x12345678
    mov ebx, 0x9ABCDEF0
    xor edx, edx
    call io_phase
    PRINT {"hybrid: io 1 done", 10}
    call compute_phase
    PRINT {"hybrid: compute 1 done", 10}
    call io_phase
    PRINT {"hybrid: io 2 done", 10}
    call compute_phase
    PRINT {"hybrid: compute 2 done", 10, "hybrid: "}
    call print_hex
    PRINT {" "}
    mov eax, ebx
    call print_hex
    PRINT {" "}
    mov eax, edx
    call print_hex
    PRINT {10}
    ret

; IO_ROUNDS times: read the master PIC's mask (a constant here), fold it in,
; write a POST code.
io_phase:
    mov ecx, IO_ROUNDS
.l: push eax
    in al, 0x21
    movzx esi, al
    pop eax
    add edx, esi
    rol edx, 3
    push eax
    mov al, cl
    out 0x80, al
    pop eax
    dec ecx
    jnz .l
    ret

; COMPUTE_ROUNDS rounds of arithmetic and stores to a 64 KiB buffer.
compute_phase:
    mov ecx, COMPUTE_ROUNDS
    mov edi, 0x20000
.l: rol eax, 5
    add eax, ebx
    xor ebx, eax
    adc edx, ecx
    mov [edi], eax
    add edi, 4
    and edi, 0x2FFFF
    or edi, 0x20000
    dec ecx
    jnz .l
    ret
%include "tail.inc"
