; A guest CPU loop for measuring interpreter speed: integer arithmetic, memory
; traffic, calls and branches in 32-bit protected mode (flat, no paging),
; 50 million iterations' worth of work split into an outer and inner loop.
%include "harness.inc"
test_main:
    mov ebp, 2000                 ; outer iterations
.outer:
    mov ecx, 1000                 ; inner iterations
    mov esi, 0x200000
    xor eax, eax
.inner:
    add eax, ecx
    mov ebx, eax
    shl ebx, 3
    xor ebx, ecx
    mov [esi + ecx * 4], ebx
    add eax, [esi + ecx * 4 - 4]
    call leaf
    dec ecx
    jnz .inner
    dec ebp
    jnz .outer
    ret
leaf:
    imul edx, eax, 13
    sub eax, edx
    ret
%include "tail.inc"
