/* Minimal freestanding runtime for the x86-64 sample kernel.
 * _start: own stack, call kernel_main, stop with int3 (the "exit by trap"
 * a host sees as interrupt 3). __fentry__ is what -pg -mfentry calls: a plain return. */
    .file "start.S"
    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq    stack_top(%rip), %rsp
    call    kernel_main
    int3
    .size _start, . - _start

    .section .text.__fentry__, "ax", @progbits
    .globl __fentry__
    .type __fentry__, @function
__fentry__:
    ret
    .size __fentry__, . - __fentry__

    .section .bss
    .balign 16
stack_bottom:
    .skip 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
