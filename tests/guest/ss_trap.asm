; MOV SS and POP SS hold back debug traps as well as interrupts for one
; instruction: with TF set, the single-step trap of the SS load is not taken
; before the next instruction, which runs first; one #DB follows it (EIP
; after it). No trap ever reports the instruction after the SS load.
%include "harness.inc"
%include "db_log.inc"

test_main:
    call db_setup

    ; MOV SS.
    DB_BEGIN .s1
    mov ecx, SEL_DATA0
    TRACE_ON
.i1: mov edx, 1
.m1: mov ss, ecx
.n1: inc edx
.s1:
    CHECK_EQ dword [db_count], 2, 1
    DB_CHECK 0, .m1, SEL_DATA0, 2
    DB_CHECK 1, .s1, SEL_DATA0, 4
    CHECK_EQ edx, 2, 6

    ; POP SS.
    DB_BEGIN .s2
    TRACE_ON
.i2: push ss
.p2: pop ss
.n2: inc edx
.s2:
    CHECK_EQ dword [db_count], 2, 7
    DB_CHECK 0, .p2, SEL_DATA0, 8
    DB_CHECK 1, .s2, SEL_DATA0, 10
    CHECK_EQ edx, 3, 12

    PRINT {"ss_trap: ok", 10}
    ret

%include "tail.inc"
