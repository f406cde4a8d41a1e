; A triple fault: an empty IDT makes every exception fault again. popek must
; shut the CPU down (exit status 4), not loop or crash.
%include "harness.inc"
test_main:
    PRINT {"triple: faulting", 10}
    lidt [empty_idt]
    int3
    FAIL 1
empty_idt:
    dw 0
    dd 0
%include "tail.inc"
