/* A function with the prologue older gcc emitted for -mprofile-kernel:
 *     mflr r0; std r0,16(r1); bl _mcount
 * so its odd-TOC addi sits at site-12, not site-8. Computes x * scale_factor + 2. */
    .abiversion 2
    .file "old_prologue.S"
    .section .text.old_prologue, "ax", @progbits
    .globl old_prologue_scaled
    .type old_prologue_scaled, @function
    .balign 16
old_prologue_scaled:
    addis   2, 12, (.TOC. - old_prologue_scaled)@ha
    addi    2, 2, (.TOC. - old_prologue_scaled)@l
    .localentry old_prologue_scaled, . - old_prologue_scaled
    mflr    0
    std     0, 16(1)
    bl      _mcount
    addis   9, 2, scale_factor@toc@ha
    ld      9, scale_factor@toc@l(9)
    mulld   3, 3, 9
    addi    3, 3, 2
    blr
    .size old_prologue_scaled, . - old_prologue_scaled

    .section .note.GNU-stack, "", @progbits
