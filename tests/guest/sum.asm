; A long deterministic computation (no interrupts, no timing): a checksum
; over 300000 rounds, a dot every 32768. For saving a machine mid-way on one
; engine and finishing it on another (kvm_snapshot_test.py): the output must
; be what one uninterrupted run prints.
%include "harness.inc"

test_main:
    PRINT {"sum: start", 10}
    mov ecx, 300000
    mov eax, 0x12345678
    mov ebx, 0x9ABCDEF0
    xor edx, edx
    mov edi, 0x20000
.l: rol eax, 5
    add eax, ebx
    xor ebx, eax
    adc edx, ecx
    mov [edi], eax
    add edi, 4
    and edi, 0x2FFFF
    or edi, 0x20000
    test ecx, 0x7FFF
    jnz .n
    push eax
    mov al, '.'
    out 0xE9, al
    pop eax
.n: dec ecx
    jnz .l
    PRINT {10, "sum: "}
    call print_hex
    PRINT {" "}
    mov eax, ebx
    call print_hex
    PRINT {" "}
    mov eax, edx
    call print_hex
    PRINT {10}
    ret
%include "tail.inc"
