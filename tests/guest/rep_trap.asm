; Single-stepping REP string instructions: with TF set, each iteration ends
; with a #DB (EIP stays on the instruction while it has iterations left, ECX
; counts down); the last one, or a REPE/REPNE that stops on its condition,
; traps with EIP after it. A REP with ECX = 0 does nothing and traps once.
%include "harness.inc"
%include "db_log.inc"

src: equ 0x500
dst: equ 0x540

test_main:
    call db_setup
    mov dword [src], 0x44332211
    mov dword [dst], 0
    cld

    ; REP MOVSB, ECX = 3: three iterations, three traps.
    DB_BEGIN .s1
    mov esi, src
    mov edi, dst
    mov ecx, 3
    TRACE_ON
.r1: rep movsb
.a1: nop
.s1:
    CHECK_EQ dword [db_count], 4, 1
    DB_CHECK 0, .r1, 2, 2
    DB_CHECK 1, .r1, 1, 4
    DB_CHECK 2, .a1, 0, 6
    DB_CHECK 3, .s1, 0, 8
    CHECK_EQ dword [dst], 0x00332211, 10

    ; REP MOVSB, ECX = 0: no iteration, one trap after it.
    DB_BEGIN .s2
    xor ecx, ecx
    TRACE_ON
.r2: rep movsb
.a2: nop
.s2:
    CHECK_EQ dword [db_count], 2, 11
    DB_CHECK 0, .a2, 0, 12
    DB_CHECK 1, .s2, 0, 14

    ; REPE CMPSB, ECX = 4, the third bytes differ: three iterations.
    mov dword [dst], 0x44FF2211
    DB_BEGIN .s3
    mov esi, src
    mov edi, dst
    mov ecx, 4
    TRACE_ON
.r3: repe cmpsb
.a3: nop
.s3:
    CHECK_EQ dword [db_count], 4, 16
    DB_CHECK 0, .r3, 3, 17
    DB_CHECK 1, .r3, 2, 19
    DB_CHECK 2, .a3, 1, 21
    DB_CHECK 3, .s3, 1, 23

    ; REPE CMPSB, ECX = 4, all equal: four iterations.
    mov dword [dst], 0x44332211
    DB_BEGIN .s4
    mov esi, src
    mov edi, dst
    mov ecx, 4
    TRACE_ON
.r4: repe cmpsb
.a4: nop
.s4:
    CHECK_EQ dword [db_count], 5, 25
    DB_CHECK 0, .r4, 3, 26
    DB_CHECK 1, .r4, 2, 28
    DB_CHECK 2, .r4, 1, 30
    DB_CHECK 3, .a4, 0, 32
    DB_CHECK 4, .s4, 0, 34

    ; REPNE SCASB finding AL in the second byte, and REP STOSD: the same.
    DB_BEGIN .s5
    mov edi, src
    mov ecx, 3
    mov al, 0x22
    TRACE_ON
.r5: repne scasb
.a5: rep stosd                ; ECX = 1 left: one iteration
.s5:
    CHECK_EQ dword [db_count], 3, 36
    DB_CHECK 0, .r5, 2, 37
    DB_CHECK 1, .a5, 1, 39
    DB_CHECK 2, .s5, 0, 41
    PRINT {"rep_trap: ok", 10}
    ret

%include "tail.inc"
