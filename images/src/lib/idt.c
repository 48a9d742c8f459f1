/*
 * idt.c - building and loading a 64-bit IDT, for the guests that link
 * traps.S.
 */
#include "tandem.h"

#define GATE_INTERRUPT 0x8E /* present, DPL 0, 64-bit interrupt gate */

void idt_set(struct idt_gate *idt, int vector, u64 handler)
{
	struct idt_gate *g = &idt[vector];

	g->offset_low = (u16)handler;
	g->selector = KERNEL_CS;
	g->ist = 0;
	g->type_attr = GATE_INTERRUPT;
	g->offset_mid = (u16)(handler >> 16);
	g->offset_high = (u32)(handler >> 32);
	g->reserved = 0;
}

void idt_set_exceptions(struct idt_gate *idt)
{
	for (int v = 0; v < EXCEPTION_VECTORS; v++)
		idt_set(idt, v, exception_vectors[v]);
}

void idt_load(const struct idt_gate *idt, int vectors)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idtr;

	idtr.limit = (u16)(vectors * sizeof(*idt) - 1);
	idtr.base = (u64)idt;
	__asm__ __volatile__("lidt %0" : : "m"(idtr) : "memory");
}
