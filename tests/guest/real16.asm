; Real-mode instructions that 64-bit mode cannot run, checked against values
; derived from the Intel SDM: BCD adjust (DAA/DAS/AAA/AAS/AAM/AAD), PUSHA/POPA,
; BOUND (#BR), LDS/LES, 16-bit addressing and default segments, segment
; arithmetic, #DE through the IVT, and the 64 KiB offset limit (#GP).
bits 16
org 0xF0000

%macro OUTS 1
    jmp %%a
%%s: db %1, 0
%%a:
    push si
    mov si, %%s - $$
    call print16
    pop si
%endmacro
%macro FAIL16 1
    OUTS "FAIL "
    mov al, %1
    add al, '0'
    out 0xE9, al
    mov al, 10
    out 0xE9, al
    mov al, %1
    out 0xF4, al
    hlt
%endmacro
; EXPECT reg, value, n
%macro EXPECT 3
    cmp %1, %2
    je %%ok
    FAIL16 %3
%%ok:
%endmacro
; EXPECT_FLAGS mask, value, n (on the current FLAGS)
%macro EXPECT_FLAGS 3
    pushf
    pop dx
    and dx, %1
    cmp dx, %2
    je %%ok
    FAIL16 %3
%%ok:
%endmacro

print16:
    push ds
    push ax
    push cs
    pop ds
.l: lodsb
    test al, al
    jz .d
    out 0xE9, al
    jmp .l
.d: pop ax
    pop ds
    ret

start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ds, ax
    mov es, ax
    ; IVT: #DE, #BR, #GP (real mode "int 13" for a segment limit violation)
    mov word [0 * 4], de_handler - $$
    mov word [0 * 4 + 2], 0xF000
    mov word [5 * 4], br_handler - $$
    mov word [5 * 4 + 2], 0xF000
    mov word [13 * 4], gp_handler - $$
    mov word [13 * 4 + 2], 0xF000
    mov word [0x600], 0

    ; DAA after 79h + 35h = AEh -> 14h, CF=1, AF=1
    mov al, 0x79
    add al, 0x35
    daa
    EXPECT_FLAGS 0x11, 0x11, 1
    EXPECT al, 0x14, 1
    ; DAS after 35h - 47h = EEh -> 88h, CF=1, AF=1
    mov al, 0x35
    sub al, 0x47
    das
    EXPECT_FLAGS 0x11, 0x11, 2
    EXPECT al, 0x88, 2
    ; AAA after 09h + 08h: AX = 0107h, CF=AF=1
    mov ax, 0x0009
    add al, 0x08
    aaa
    EXPECT_FLAGS 0x11, 0x11, 3
    EXPECT ax, 0x0107, 3
    ; AAS after 08h - 09h: AX = FF09h, CF=AF=1
    mov ax, 0x0008
    sub al, 0x09
    aas
    EXPECT_FLAGS 0x11, 0x11, 4
    EXPECT ax, 0xFF09, 4
    ; AAM: 63 -> AH=6, AL=3; AAD: 0603h -> 003Fh
    mov ax, 63
    aam
    EXPECT ax, 0x0603, 5
    aad
    EXPECT ax, 0x003F, 5
    ; AAM 0 raises #DE; the handler skips the 2-byte instruction.
    mov ax, 5
    db 0xD4, 0x00
    EXPECT word [0x600], 1, 6

    ; PUSHA/POPA: SP pushed is the value before PUSHA.
    mov ax, 1
    mov cx, 2
    mov dx, 3
    mov bx, 4
    mov bp, 5
    mov si, 6
    mov di, 7
    pusha
    mov bx, sp
    EXPECT word [ss:bx + 6], 0x7000, 7
    EXPECT word [ss:bx + 14], 1, 7
    xor ax, ax
    xor bx, bx
    mov bp, 0
    popa
    EXPECT ax, 1, 7
    EXPECT bp, 5, 7
    EXPECT sp, 0x7000, 7

    ; 16-bit addressing: [bx+si+disp] in DS, [bp+di] in SS.
    mov ax, 0x2000
    mov ds, ax
    mov ax, 0x3000
    mov ss, ax
    mov bx, 0x100
    mov si, 0x20
    mov word [bx + si + 4], 0x1111      ; linear 0x20124
    mov bp, 0x200
    mov di, 0x10
    mov word [bp + di], 0x2222          ; linear 0x30210
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov ax, 0x2012
    mov ds, ax
    EXPECT word [0x4], 0x1111, 8
    mov ax, 0x3021
    mov ds, ax
    EXPECT word [0x0], 0x2222, 8
    xor ax, ax
    mov ds, ax

    ; LDS/LES load a far pointer.
    mov word [0x700], 0x1234
    mov word [0x702], 0x5678
    lds si, [0x700]
    mov ax, ds
    EXPECT ax, 0x5678, 9
    EXPECT si, 0x1234, 9
    xor ax, ax
    mov ds, ax
    les di, [0x700]
    mov ax, es
    EXPECT ax, 0x5678, 9

    ; BOUND: 5 within [0, 10] is fine; 11 raises #BR.
    mov word [0x710], 0
    mov word [0x712], 10
    mov ax, 5
    bound ax, [0x710]
    mov ax, 11
    bound ax, [0x710]                    ; 4 bytes: 62 06 10 07
    EXPECT word [0x600], 2, 10

    ; A word at offset 0xFFFF crosses the 64 KiB limit: #GP in real mode.
    mov bx, 0xFFFF
    mov ax, [bx]                         ; 2 bytes: 8B 07
    EXPECT word [0x600], 3, 11

    OUTS "real16: ok"
    mov al, 10
    out 0xE9, al
    OUTS "PASS"
    mov al, 10
    out 0xE9, al
    mov al, 0
    out 0xF4, al
    hlt

de_handler:
    push bx
    push ds
    xor bx, bx
    mov ds, bx
    inc word [0x600]
    mov bx, sp
    add word [ss:bx + 4], 2   ; skip AAM imm8 (return IP is the faulting instruction)
    pop ds
    pop bx
    iret
br_handler:
    push bx
    push ds
    xor bx, bx
    mov ds, bx
    inc word [0x600]
    mov bx, sp
    add word [ss:bx + 4], 4
    pop ds
    pop bx
    iret
gp_handler:
    push bx
    push ds
    xor bx, bx
    mov ds, bx
    inc word [0x600]
    mov bx, sp
    add word [ss:bx + 4], 2
    pop ds
    pop bx
    iret

    times 0xFFF0 - ($ - $$) db 0xF4
    jmp 0xF000:start
    times 0x10000 - ($ - $$) db 0xF4
