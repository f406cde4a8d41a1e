; Paging: 4 KiB and 4 MiB (PSE) pages, #PF with the right CR2 and error code,
; A/D bits set by the walk, CR0.WP, INVLPG, user/supervisor checks.
%include "harness.inc"

%define PD 0x10000
%define PT 0x11000
pf_count: equ 0x600
pf_cr2: equ 0x604
pf_err: equ 0x608

test_main:
    ; Page table: identity map 0-4 MiB with 4 KiB pages (supervisor, RW),
    ; except 0x300000 (not present) and 0x301000 (read-only), 0x302000 (user).
    mov edi, PT
    mov eax, 0x003              ; present | RW
    mov ecx, 1024
.fill:
    stosd
    add eax, 0x1000
    loop .fill
    and dword [PT + (0x300000 >> 12) * 4], ~1
    and dword [PT + (0x301000 >> 12) * 4], ~2
    or dword [PT + (0x302000 >> 12) * 4], 4
    ; Page directory: entry 0 -> PT (user allowed at the directory level),
    ; entry 0x100 (0x40000000) -> 4 MiB page at physical 0.
    mov edi, PD
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PD], PT | 7
    mov dword [PD + 0x100 * 4], 0x00000083     ; present | RW | PS
    ; #PF handler.
    mov eax, 14
    mov ebx, pf_handler
    mov ecx, 0x8E
    mov edx, SEL_CODE0
    call set_gate
    call load_idt
    mov dword [pf_count], 0
    ; Enable PSE, paging, WP.
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
    PRINT {"paging: on", 10}

    ; A/D bits: the directory entry's A is set by the first walk.
    mov eax, [PD]
    test eax, 0x20
    jnz .a_ok
    FAIL 1
.a_ok:
    ; Read of a not-present page: #PF, error 0 (read, supervisor, not present).
    mov eax, [0x300010]
    CHECK_EQ dword [pf_count], 1, 2
    CHECK_EQ dword [pf_cr2], 0x300010, 3
    CHECK_EQ dword [pf_err], 0, 4
    ; Write to a read-only page with CR0.WP=1: #PF, error 3 (present, write).
    mov dword [0x301020], 0x55
    CHECK_EQ dword [pf_count], 2, 5
    CHECK_EQ dword [pf_cr2], 0x301020, 6
    CHECK_EQ dword [pf_err], 3, 7
    ; The handler made it writable; the write completed and set D.
    CHECK_EQ dword [0x301020], 0x55, 8
    mov eax, [PT + (0x301000 >> 12) * 4]
    and eax, 0x60
    CHECK_EQ eax, 0x60, 9
    ; A read sets A but not D.
    mov eax, [0x305000]
    mov eax, [PT + (0x305000 >> 12) * 4]
    and eax, 0x60
    CHECK_EQ eax, 0x20, 10
    ; 4 MiB page: linear 0x40000000 + x = physical x; A and D in the PDE.
    mov dword [0x40100000], 0xABCD1234
    CHECK_EQ dword [0x100000], 0xABCD1234, 11
    mov eax, [PD + 0x100 * 4]
    and eax, 0x60
    CHECK_EQ eax, 0x60, 12
    ; Stale TLB entry until INVLPG: unmap 0x306000 without flushing, read
    ; still works (the TLB caches it), after INVLPG it faults.
    mov eax, [0x306000]
    and dword [PT + (0x306000 >> 12) * 4], ~1
    mov eax, [0x306000]
    CHECK_EQ dword [pf_count], 2, 13
    invlpg [0x306000]
    mov eax, [0x306004]
    CHECK_EQ dword [pf_count], 3, 14
    CHECK_EQ dword [pf_cr2], 0x306004, 15
    ; A fetch from a not-present page: #PF with CR2 = the target.
    and dword [PT + (0x307000 >> 12) * 4], ~1
    mov byte [0x307000], 0xC3      ; would be "ret" (the handler maps it back)
    ; (the store faulted first and was fixed; now unmap again and jump there)
    and dword [PT + (0x307000 >> 12) * 4], ~1
    invlpg [0x307000]
    call 0x307000
    CHECK_EQ dword [pf_cr2], 0x307000, 16
    PRINT {"paging: ok", 10}
    ret

pf_handler:
    push eax
    mov eax, cr2
    mov [pf_cr2], eax
    mov eax, [esp + 4]
    mov [pf_err], eax
    inc dword [pf_count]
    ; Fix the page: present and writable.
    mov eax, cr2
    shr eax, 12
    cmp eax, 1024
    jae .fail
    or dword [PT + eax * 4], 3
    mov eax, cr2
    invlpg [eax]
    pop eax
    add esp, 4
    iret
.fail:
    FAIL 99
%include "tail.inc"
