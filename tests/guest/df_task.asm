; A double fault delivered through a task gate (as Linux/i386 does): #GP whose
; IDT entry is not present raises #NP while delivering #GP, which is #DF; the
; #DF task gate switches to a second TSS.
%include "harness.inc"

%define TSS0 0x3000
%define TSS1 0x4000
%define SEL_TSS1 0x30

test_main:
    mov edi, TSS0
    mov ecx, 0x80
    xor eax, eax
    rep stosd                       ; clears TSS0 and TSS1 (0x200 bytes)
    mov edi, TSS1
    mov ecx, 0x80
    rep stosd
    mov eax, SEL_TSS
    mov ebx, TSS0
    call set_tss
    mov ax, SEL_TSS
    ltr ax
    ; TSS1: the double-fault task.
    mov dword [TSS1 + 0x1C], 0          ; cr3
    mov dword [TSS1 + 0x20], df_task    ; eip
    mov dword [TSS1 + 0x24], 2          ; eflags
    mov dword [TSS1 + 0x38], 0x70000    ; esp
    mov word [TSS1 + 0x4C], SEL_CODE0   ; cs
    mov word [TSS1 + 0x50], SEL_DATA0   ; ss
    mov word [TSS1 + 0x54], SEL_DATA0   ; ds
    mov word [TSS1 + 0x48], SEL_DATA0   ; es
    mov eax, SEL_TSS1
    mov ebx, TSS1
    call set_tss
    ; IDT: 8 = task gate to TSS1; 13 left not present.
    mov edi, IDT_BASE
    mov ecx, 256 * 2
    xor eax, eax
    rep stosd
    mov word [IDT_BASE + 8 * 8 + 2], SEL_TSS1
    mov byte [IDT_BASE + 8 * 8 + 5], 0x85    ; present task gate
    call load_idt
    mov dword [0x600], 0x11111111
    ; Raise #GP: load a selector beyond the GDT limit into DS.
    mov eax, 0xF8F8
    mov ebx, 0x2222
    mov ds, ax
    FAIL 1

df_task:
    ; New task: TR is TSS1, its back link names TSS0, NT is set, the old
    ; task's registers were saved in TSS0.
    str ax
    movzx eax, ax
    CHECK_EQ eax, SEL_TSS1, 2
    movzx eax, word [TSS1]
    CHECK_EQ eax, SEL_TSS, 3
    pushfd
    pop eax
    and eax, 0x4000
    CHECK_EQ eax, 0x4000, 4
    mov eax, [TSS0 + 0x34]              ; saved EBX of the faulting task
    CHECK_EQ eax, 0x2222, 5
    ; The #DF error code (0) was pushed on the new task's stack.
    pop eax
    CHECK_EQ eax, 0, 6
    ; The old TSS is still busy (CALL-like nesting).
    mov eax, [GDT_BASE + SEL_TSS + 4]
    and eax, 0x0F00
    CHECK_EQ eax, 0x0B00, 7
    PRINT {"df_task: ok", 10}
    PASS
%include "tail.inc"
