; Says it runs, then loops forever with interrupts off: for the stop test
; (a signal must get popek out of the engine, KVM_RUN included).
%include "harness.inc"

test_main:
    PRINT {"spin: running", 10}
.l: jmp .l
%include "tail.inc"
