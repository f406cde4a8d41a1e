; Ring 3 <-> ring 0 through an interrupt gate, a trap gate, a call gate and
; IRET; #GP for privileged instructions in ring 3; PUSHF in ring 3 shows the
; real IF; the ring-0 stack comes from the TSS.
%include "harness.inc"

%define TSS0 0x3000
%define SEL_CALLGATE 0x33    ; GDT entry 6, RPL 3

gp_count: equ 0x600
gp_last_err: equ 0x604
gp_last_cs: equ 0x608

test_main:
    ; TSS with the ring-0 stack.
    mov edi, TSS0
    mov ecx, 0x68 / 4
    xor eax, eax
    rep stosd
    mov dword [TSS0 + 4], 0x88000     ; esp0
    mov dword [TSS0 + 8], SEL_DATA0   ; ss0
    mov word [TSS0 + 0x66], 0x68      ; I/O map base beyond the limit: no I/O allowed
    mov eax, SEL_TSS
    mov ebx, TSS0
    call set_tss
    mov ax, SEL_TSS
    ltr ax
    ; IDT: #GP (ring-0 interrupt gate), 0x80 (DPL 3 trap gate), 0x81 (DPL 3 interrupt gate)
    mov eax, 13
    mov ebx, gp_handler
    mov ecx, 0x8E
    mov edx, SEL_CODE0
    call set_gate
    mov eax, 0x80
    mov ebx, syscall_handler
    mov ecx, 0xEF
    call set_gate
    mov eax, 0x81
    mov ebx, finish_handler
    mov ecx, 0xEE
    call set_gate
    call load_idt
    ; Call gate (GDT entry 6): DPL 3, target ring-0 code, 1 parameter.
    mov eax, SEL_CALLGATE
    mov ebx, gate_target
    and ebx, 0xFFFF
    or ebx, SEL_CODE0 << 16
    mov edx, gate_target
    and edx, 0xFFFF0000
    or edx, 0x0000EC01
    call set_desc
    mov dword [gp_count], 0
    ; Enter ring 3 with IF=1, IOPL=0.
    push dword SEL_DATA3
    push dword 0x80000
    push dword 0x202
    push dword SEL_CODE3
    push dword user_code
    iret

user_code:
    ; IRET to ring 3 nulled DS/ES (they held ring-0 selectors): check, then reload.
    mov ax, ds
    movzx eax, ax
    CHECK_EQ eax, 0, 9
    mov ax, SEL_DATA3
    mov ds, ax
    mov es, ax
    mov ax, cs
    and eax, 3
    CHECK_EQ eax, 3, 10
    mov ax, ss
    movzx eax, ax
    CHECK_EQ eax, SEL_DATA3, 11
    ; PUSHF in ring 3 shows the real IF (set) and IOPL 0.
    pushfd
    pop eax
    and eax, 0x3200
    CHECK_EQ eax, 0x200, 12
    ; Privileged or IOPL-sensitive instructions fault with #GP(0).
    cli                       ; 1 byte
    hlt                       ; 1 byte
    mov eax, cr0              ; 3 bytes
    in al, 0x80               ; 2 bytes: IOPL 0, no I/O bitmap
    mov eax, [gp_count]
    CHECK_EQ eax, 4, 13
    ; POPF in ring 3 cannot clear IF or change IOPL (silently).
    push dword 0x3002
    popfd
    pushfd
    pop eax
    and eax, 0x3200
    CHECK_EQ eax, 0x200, 14
    ; INT 0x80 through a DPL-3 trap gate.
    mov eax, 0x1234
    int 0x80
    CHECK_EQ eax, 0x5678, 15
    ; Far call through the call gate, with one parameter copied.
    push dword 0xCAFE
    call SEL_CALLGATE:0
    CHECK_EQ eax, 0xCAFE, 16
    mov ax, cs
    and eax, 3
    CHECK_EQ eax, 3, 17
    ; INT 0x81 from ring 3 to finish in ring 0.
    int 0x81
    FAIL 18

gp_handler:
    ; #GP from ring 3: error code 0, saved CS = user code.
    mov eax, [esp]
    mov [gp_last_err], eax
    CHECK_EQ eax, 0, 20
    mov eax, [esp + 8]
    CHECK_EQ eax, SEL_CODE3, 21
    ; Skip the faulting instruction: lengths 1, 1, 3, 2.
    mov eax, [gp_count]
    movzx eax, byte [gp_skip + eax]
    add [esp + 4], eax
    inc dword [gp_count]
    add esp, 4
    iret
gp_skip: db 1, 1, 3, 2

syscall_handler:
    ; Ring 0 on the TSS stack: saved SS:ESP are the ring-3 ones.
    mov bx, cs
    and ebx, 3
    CHECK_EQ ebx, 0, 30
    CHECK_EQ eax, 0x1234, 31
    mov ebx, [esp + 16]
    CHECK_EQ ebx, SEL_DATA3, 32
    cmp esp, 0x88000
    jb .stack_ok
    FAIL 33
.stack_ok:
    mov eax, 0x5678
    iret

gate_target:
    mov bx, cs
    and ebx, 3
    CHECK_EQ ebx, 0, 40
    ; Stack: [esp] EIP, [esp+4] CS, [esp+8] param, [esp+12] ESP, [esp+16] SS.
    mov eax, [esp + 8]
    mov ebx, [esp + 16]
    CHECK_EQ ebx, SEL_DATA3, 41
    retf 4

finish_handler:
    mov bx, cs
    and ebx, 3
    CHECK_EQ ebx, 0, 50
    PRINT {"rings: ok", 10}
    PASS
%include "tail.inc"
