; The PIT's channel 0 at 1 kHz through the PIC: ten IRQ 0 interrupts wake
; the CPU from HLT (the board waits for the next device deadline while the
; CPU is halted, and injects the interrupt when it is due), each
; acknowledged with a non-specific EOI.
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
    ; PIT channel 0: mode 2 (rate generator), 1193 counts = 1 ms.
    mov al, 0x34
    out 0x43, al
    mov al, 1193 & 0xFF
    out 0x40, al
    mov al, 1193 >> 8
    out 0x40, al
    sti
.wait:
    hlt
    cmp dword [ticks], 10
    jb .wait
    cli
    PRINT {"pit_tick: ok", 10}
    ret

irq0_handler:
    push eax
    inc dword [ticks]
    mov al, 0x20
    out 0x20, al
    pop eax
    iret
%include "tail.inc"
