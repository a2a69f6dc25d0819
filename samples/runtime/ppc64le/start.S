/* Minimal freestanding runtime for the ppc64le (ELFv2) sample kernel.
 * _start: find the TOC from its own address, own stack with a null back chain, call
 * kernel_main, stop with `trap` (interrupt 6 for the host).
 * _mcount: what `-pg -mprofile-kernel` calls right after `mflr r0`. On entry LR points
 * back into the function and r0 holds the function's own return address, so the stub
 * jumps back through CTR and puts the function's LR back. r12 is free at that point. */
    .abiversion 2
    .file "start.S"
    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    bl      1f
1:  mflr    12
    addis   2, 12, (.TOC. - 1b)@ha
    addi    2, 2, (.TOC. - 1b)@l
    addis   1, 2, stack_top@toc@ha
    addi    1, 1, stack_top@toc@l
    li      0, 0
    stdu    0, -32(1)
    bl      kernel_main
    nop
    trap
    .size _start, . - _start

    .section .text._mcount, "ax", @progbits
    .globl _mcount
    .type _mcount, @function
_mcount:
    mflr    12
    mtctr   12
    mtlr    0
    bctr
    .size _mcount, . - _mcount

    .section .bss
    .balign 16
stack_bottom:
    .skip 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
