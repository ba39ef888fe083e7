/* Host check for the difftest allow-list entry crc32-16bit-code: CRC32 in a
 * 16-bit code segment (an LDT entry made with modify_ldt), with and without
 * 0x66, on the host CPU. Build: gcc -O0 -no-pie -o crc32_16bit crc32_16bit.c
 * (x86-64 Linux). The Intel host of issue 12 printed 54001bc0 for the 66
 * form (the 32-bit source) and 6672948e without it (the 16-bit source). */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <asm/ldt.h>
#include <sys/syscall.h>
#include <unistd.h>
/* Runs CRC32 in a 16-bit code segment (an LDT entry), with and without 0x66. */
static uint32_t run(const unsigned char *code, int len, uint32_t edx, uint32_t eax) {
  unsigned char *seg = mmap(0, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS|MAP_32BIT, -1, 0);
  unsigned char *stk = mmap(0, 65536, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_32BIT, -1, 0);
  memcpy(seg, code, len);
  seg[len] = 0x66; seg[len+1] = 0xCB; /* o32 retf */
  struct user_desc d = {0};
  d.entry_number = 0; d.base_addr = (unsigned)(uintptr_t)seg; d.limit = 0xFFFF;
  d.seg_32bit = 0; d.contents = 2 /* code */; d.read_exec_only = 0; d.limit_in_pages = 0; d.seg_not_present = 0; d.useable = 1;
  if (syscall(SYS_modify_ldt, 1, &d, sizeof d) != 0) { perror("modify_ldt"); return 0; }
  struct { uint32_t off; uint16_t sel; } __attribute__((packed)) far = { 0, (0 << 3) | 4 | 3 };
  uint64_t top = (uint64_t)(uintptr_t)stk + 65536 - 64;
  uint32_t out_edx;
  __asm__ volatile(
    "mov %%rsp, %%r12\n"
    "mov %3, %%rsp\n"
    "lcall *(%4)\n"
    "mov %%r12, %%rsp\n"
    : "=d"(out_edx) : "d"(edx), "a"(eax), "r"(top), "r"(&far) : "r12", "memory");
  return out_edx;
}
int main(void) {
  unsigned char with66[] = {0x66, 0xF2, 0x0F, 0x38, 0xF1, 0xD0};  /* crc32 edx, eax (o32) */
  unsigned char without[] = {0xF2, 0x0F, 0x38, 0xF1, 0xD0};        /* crc32 edx, ax (o16) */
  uint32_t a = run(with66, sizeof with66, 0xfffffdff, 0x691b00);
  uint32_t b = run(without, sizeof without, 0xfffffdff, 0x691b00);
  /* 32-bit-code references with the inline assembler (64-bit process). */
  uint32_t r32 = 0xfffffdff, r16 = 0xfffffdff; uint32_t v = 0x691b00; uint16_t v16 = 0x1b00;
  __asm__("crc32l %1, %0" : "+r"(r32) : "r"(v));
  __asm__("crc32w %1, %0" : "+r"(r16) : "r"(v16));
  printf("16-bit code, 66 prefix: %08x (32-bit source: %08x)\n", a, r32);
  printf("16-bit code, no prefix: %08x (16-bit source: %08x)\n", b, r16);
  return 0;
}
