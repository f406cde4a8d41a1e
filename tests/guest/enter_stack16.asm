; ENTER with a 32-bit operand size on a 16-bit stack (SS.B = 0): SP moves
; modulo 64 KiB, and the frame pointer loaded into EBP (and pushed as the
; last display entry) is ESP after the push of EBP: the upper half of ESP
; with the new SP, as real CPUs do (the SDM's pseudo-code says SP). The
; display entries are read at BP - 4, BP - 8, ... LEAVE undoes it.
%include "harness.inc"

%define SEL_DATA16 0x30      ; ring-0 data, flat, B = 0: a 16-bit stack
saved_esp: equ 0x600

test_main:
    mov eax, SEL_DATA16
    mov edx, 0x008F9300
    mov ebx, 0x0000FFFF
    call set_desc
    mov [saved_esp], esp
    ; The caller's display: three frame pointers below the old BP (0xFFEC).
    mov dword [0xFFE8], 0x11111111
    mov dword [0xFFE4], 0x22222222
    mov dword [0xFFE0], 0x33333333

    mov ax, SEL_DATA16
    mov ss, ax
    mov esp, 0x00010000
    mov ebp, 0x0001FFEC
    enter 8, 36              ; nesting level 36 mod 32 = 4
    mov ebx, esp
    mov ecx, ebp
    leave
    mov esi, esp
    mov edi, ebp
    mov ax, SEL_DATA0
    mov ss, ax
    mov esp, [saved_esp]
    CHECK_EQ ebx, 0x0001FFE4, 1
    CHECK_EQ ecx, 0x0001FFFC, 2
    CHECK_EQ dword [0xFFFC], 0x0001FFEC, 3     ; the old EBP
    CHECK_EQ dword [0xFFF8], 0x11111111, 4     ; the display
    CHECK_EQ dword [0xFFF4], 0x22222222, 5
    CHECK_EQ dword [0xFFF0], 0x33333333, 6
    CHECK_EQ dword [0xFFEC], 0x0001FFFC, 7     ; the new frame pointer
    CHECK_EQ esi, 0x00010000, 8                ; LEAVE: SP = BP + 4 (wraps)
    CHECK_EQ edi, 0x0001FFEC, 9

    ; Nesting level 0: EBP = ESP after the push, SP wraps below 0.
    mov ax, SEL_DATA16
    mov ss, ax
    mov esp, 0x00050000
    mov ebp, 0xAAAA5555
    enter 0x10, 0
    mov ebx, esp
    mov ecx, ebp
    mov ax, SEL_DATA0
    mov ss, ax
    mov esp, [saved_esp]
    CHECK_EQ ebx, 0x0005FFEC, 10
    CHECK_EQ ecx, 0x0005FFFC, 11
    CHECK_EQ dword [0xFFFC], 0xAAAA5555, 12
    PRINT {"enter_stack16: ok", 10}
    ret
%include "tail.inc"
