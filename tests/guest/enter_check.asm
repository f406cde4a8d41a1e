; ENTER ends by checking that the final stack pointer may be written
; (operand-size bytes there), without writing: at CPL 3 with the page below
; a supervisor page, or a user read-only one, that is #PF with error code 7
; (present, write, user), and the faulting ENTER changed no register.
%include "harness.inc"

%define TSS0 0x3000
%define PD 0x10000
%define PT 0x11000
pf_count: equ 0x600
pf_cr2: equ 0x604
pf_err: equ 0x608
pf_eip: equ 0x60C
pf_esp: equ 0x610

test_main:
    mov edi, TSS0
    mov ecx, 0x68 / 4
    xor eax, eax
    rep stosd
    mov dword [TSS0 + 4], 0x88000     ; esp0
    mov dword [TSS0 + 8], SEL_DATA0   ; ss0
    mov word [TSS0 + 0x66], 0x68
    mov eax, SEL_TSS
    mov ebx, TSS0
    call set_tss
    mov ax, SEL_TSS
    ltr ax
    mov eax, 14
    mov ebx, pf_handler
    mov ecx, 0x8E
    mov edx, SEL_CODE0
    call set_gate
    mov eax, 0x81
    mov ebx, finish_handler
    mov ecx, 0xEE
    call set_gate
    call load_idt
    ; Identity map 0-4 MiB, user and writable, except 0x200000 (supervisor)
    ; and 0x202000 (user, read-only). Markers where the checks land.
    mov edi, PT
    mov eax, 0x007
    mov ecx, 1024
.fill:
    stosd
    add eax, 0x1000
    loop .fill
    and dword [PT + (0x200000 >> 12) * 4], ~4
    and dword [PT + (0x202000 >> 12) * 4], ~2
    mov edi, PD
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PD], PT | 7
    mov byte [0x200FFF], 0xA5
    mov byte [0x202FFF], 0x5A
    mov dword [pf_count], 0
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
    ; Ring 3 with IOPL 3 (so that a failing check can print).
    push dword SEL_DATA3
    push dword 0x80000
    push dword 0x3002
    push dword SEL_CODE3
    push dword user_code
    iret

user_code:
    mov ax, SEL_DATA3
    mov ds, ax
    mov es, ax
    ; The 4 bytes at the final ESP (0x200FFF) start on a supervisor page.
    mov esp, 0x201004
    mov ebp, 0x12345678
.enter1:
    enter 1, 0
    mov ebx, esp
    mov ecx, ebp
    mov esp, 0x80000
    CHECK_EQ dword [pf_count], 1, 1
    CHECK_EQ dword [pf_err], 7, 2
    CHECK_EQ dword [pf_cr2], 0x200FFF, 3
    CHECK_EQ dword [pf_eip], .enter1, 4
    CHECK_EQ dword [pf_esp], 0x201004, 5
    ; The handler made the page user: ENTER ran again and completed.
    CHECK_EQ ebx, 0x200FFF, 6
    CHECK_EQ ecx, 0x201000, 7
    CHECK_EQ dword [0x201000], 0x12345678, 8
    movzx eax, byte [0x200FFF]
    CHECK_EQ eax, 0xA5, 9                   ; the check wrote nothing
    ; A user read-only page: readable, but the check is a write.
    mov esp, 0x203004
    mov ebp, 0x0BADF00D
.enter2:
    enter 1, 0
    mov ebx, esp
    mov esp, 0x80000
    CHECK_EQ dword [pf_count], 2, 10
    CHECK_EQ dword [pf_err], 7, 11
    CHECK_EQ dword [pf_cr2], 0x202FFF, 12
    CHECK_EQ dword [pf_eip], .enter2, 13
    CHECK_EQ ebx, 0x202FFF, 14
    movzx eax, byte [0x202FFF]
    CHECK_EQ eax, 0x5A, 15
    ; A 16-bit ENTER where all is writable: no fault.
    mov esp, 0x204002
    o16 enter 2, 0
    mov ebx, esp
    mov esp, 0x80000
    CHECK_EQ dword [pf_count], 2, 16
    CHECK_EQ ebx, 0x203FFE, 17
    int 0x81
    FAIL 18

pf_handler:
    push eax
    inc dword [pf_count]
    mov eax, cr2
    mov [pf_cr2], eax
    mov eax, [esp + 4]
    mov [pf_err], eax
    mov eax, [esp + 8]
    mov [pf_eip], eax
    mov eax, [esp + 20]
    mov [pf_esp], eax
    ; Make the page user and writable, and retry.
    mov eax, cr2
    shr eax, 12
    or dword [PT + eax * 4], 7
    mov eax, cr2
    invlpg [eax]
    pop eax
    add esp, 4
    iret

finish_handler:
    PRINT {"enter_check: ok", 10}
    PASS
%include "tail.inc"
