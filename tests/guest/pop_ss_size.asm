; POP SS that changes the stack size: the pop moves the stack pointer by the
; rule of the stack it popped from (the SS in force before the load; SDM POP:
; StackAddrSize is read before the destination is written), not by the new
; SS's B bit.
%include "harness.inc"

%define SEL_DATA16 0x30      ; ring-0 data, flat, B = 0: a 16-bit stack
saved_esp: equ 0x600

test_main:
    mov eax, SEL_DATA16
    mov edx, 0x008F9300
    mov ebx, 0x0000FFFF
    call set_desc
    mov [saved_esp], esp

    ; 16-bit stack -> 32-bit stack, 32-bit pop: SP wraps to 0, the upper
    ; half of ESP stays.
    mov dword [0xFFFC], SEL_DATA0
    mov ax, SEL_DATA16
    mov ss, ax
    mov esp, 0x0002FFFC
    pop ss
    mov ebx, esp
    mov esp, [saved_esp]
    CHECK_EQ ebx, 0x00020000, 1
    mov ax, ss
    movzx eax, ax
    CHECK_EQ eax, SEL_DATA0, 2

    ; The same with a 16-bit pop.
    mov word [0xFFFE], SEL_DATA0
    mov ax, SEL_DATA16
    mov ss, ax
    mov esp, 0x0002FFFE
    o16 pop ss
    mov ebx, esp
    mov esp, [saved_esp]
    CHECK_EQ ebx, 0x00020000, 3

    ; 32-bit stack -> 16-bit stack: ESP moves as a whole (no wrap at 64 KiB).
    mov dword [0x2FFFC], SEL_DATA16
    mov esp, 0x0002FFFC
    pop ss
    mov ebx, esp
    mov ax, ss
    movzx ecx, ax
    mov ax, SEL_DATA0
    mov ss, ax
    mov esp, [saved_esp]
    CHECK_EQ ebx, 0x00030000, 4
    CHECK_EQ ecx, SEL_DATA16, 5
    PRINT {"pop_ss_size: ok", 10}
    ret
%include "tail.inc"
