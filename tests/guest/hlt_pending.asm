; HLT with an interrupt already pending wakes at once. IRQ 0 is raised while
; IF is 0 (a one-shot PIT count runs out during a spin with interrupts
; disabled), then the PIT is left with no count (nothing will interrupt
; again) and the CPU runs STI; HLT, as Linux's idle loop does after stopping
; its tick. The pending interrupt must wake the CPU; a board that only looks
; at future device deadlines would end the run as "halted waiting for an
; interrupt no device will raise" (exit status 6) instead.
%include "harness.inc"

ticks: equ 0x700

test_main:
    mov dword [ticks], 0
    mov eax, 0x20
    mov ebx, irq0_handler
    mov ecx, 0x8E
    mov edx, SEL_CODE0
    call set_gate
    call load_idt
    ; PIC master: ICW1..ICW4 (vectors from 0x20), then IRQ 0 alone unmasked.
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xFE
    out 0x21, al
    cli
    ; PIT channel 0: mode 4 (software-triggered strobe, Linux's one-shot
    ; clockevent), 2 counts: the strobe comes a few microseconds later.
    mov al, 0x38
    out 0x43, al
    mov al, 2
    out 0x40, al
    mov al, 0
    out 0x40, al
    ; Spin with interrupts disabled until the strobe has passed: wait for
    ; 64 edges of the refresh toggle (port 0x61 bit 4, every 15 us).
    mov ecx, 64
    in al, 0x61
    and al, 0x10
    mov ah, al
.spin:
    in al, 0x61
    and al, 0x10
    cmp al, ah
    je .spin
    mov ah, al
    dec ecx
    jnz .spin
    ; Channel 0 to mode 0 with no count: no timer is armed any more (this
    ; write also latches the strobe that passed, if the board had not yet).
    mov al, 0x30
    out 0x43, al
    cmp dword [ticks], 0
    jne .early
    sti
    hlt
    cli
    cmp dword [ticks], 1
    jne .bad
    PRINT {"hlt_pending: ok", 10}
    ret
.early:
    FAIL 2
.bad:
    FAIL 3

irq0_handler:
    push eax
    inc dword [ticks]
    mov al, 0x20
    out 0x20, al
    pop eax
    iret
%include "tail.inc"
