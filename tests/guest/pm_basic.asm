; Real mode -> protected mode: the harness switches; this checks the result.
%include "harness.inc"
test_main:
    PRINT {"pm_basic: in protected mode", 10}
    mov eax, cr0
    test eax, 1
    jnz .pe
    FAIL 1
.pe:
    mov ax, cs
    movzx eax, ax
    CHECK_EQ eax, SEL_CODE0, 2
    ; flat data: write through DS, read back through ES at the same offset
    mov dword [0x100000], 0x12345678
    mov eax, [es:0x100000]
    CHECK_EQ eax, 0x12345678, 3
    ; 16-bit operand size prefix and 16-bit addressing still work
    mov ebx, 0x00007000
    mov word [ebx], 0xBEEF
    mov ax, [bx]
    movzx eax, ax
    CHECK_EQ eax, 0xBEEF, 4
    ; a far jump through the GDT
    jmp SEL_CODE0:.far
.far:
    PRINT {"pm_basic: ok", 10}
    ret
%include "tail.inc"
