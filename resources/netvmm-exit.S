/*
 * netvmm-exit N: write the byte N to I/O port 0xf4, netvmm's exit device, which
 * ends the VM with exit status N. For guest kernels without /dev/port (Debian's
 * cloud kernel has CONFIG_DEVPORT off); needs ioperm (CONFIG_X86_IOPL_IOPERM)
 * and root. No libc: the guest image builder assembles it with binutils alone.
 *
 * Exit status: 0 if the write went out and the VM went on (no exit device here),
 * 1 if ioperm was refused, 2 if N is not a number from 0 to 255.
 */
	.intel_syntax noprefix
	.globl _start
	.text
_start:
	mov	rsi, [rsp + 16]		/* argv[1] */
	test	rsi, rsi
	jz	bad_number
	xor	ebx, ebx		/* the value */
	xor	r8d, r8d		/* digits seen */
digit:
	movzx	ecx, byte ptr [rsi]
	test	ecx, ecx
	jz	parsed
	sub	ecx, '0'
	cmp	ecx, 9
	ja	bad_number		/* not a digit (unsigned: below '0' too) */
	imul	ebx, ebx, 10
	add	ebx, ecx
	cmp	ebx, 255
	ja	bad_number
	inc	rsi
	inc	r8d
	jmp	digit
parsed:
	test	r8d, r8d
	jz	bad_number
	mov	eax, 173		/* ioperm(0xf4, 1, 1) */
	mov	edi, 0xf4
	mov	esi, 1
	mov	edx, 1
	syscall
	test	eax, eax
	jnz	no_ioperm
	mov	eax, ebx
	out	0xf4, al
	xor	edi, edi
	jmp	leave
no_ioperm:
	mov	edi, 1
	jmp	leave
bad_number:
	mov	edi, 2
leave:
	mov	eax, 60			/* exit */
	syscall
