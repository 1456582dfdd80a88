//! Per-vCPU architectural state for the Linux 64-bit boot protocol: CPUID, MSRs, FPU, LAPIC
//! LINT pins, and for the boot CPU the long-mode registers, GDT and identity page tables.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("vCPU {cpu}: cannot {what}: {source}")]
    Kvm {
        cpu: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { cpu: u8, set: usize, wanted: usize },
    #[error("cannot write boot {what} into guest memory at {addr:#x}: {source}")]
    Memory {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

fn kvm_err(cpu: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { cpu, what, source }
}

// CPUID bits we adjust.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// What the guest is told about its CPUs beyond what KVM reports as supported.
#[derive(Debug, Clone, Copy)]
pub struct CpuidPlan {
    pub cpus: u8,
    /// KVM emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER) but leaves the CPUID
    /// bit to the VMM, as it depends on the in-kernel LAPIC. Without it Linux programs its
    /// timer through the LAPIC's count registers, unlike the same guest under QEMU.
    pub tsc_deadline: bool,
}

/// Adapts KVM's supported CPUID to this vCPU: its APIC ID, the logical processor count,
/// the TSC-deadline timer, and the hypervisor bit so that the guest picks paravirtual clocks.
pub fn patch_cpuid(cpuid: &mut CpuId, cpu: u8, plan: CpuidPlan) {
    let apic_id = u32::from(cpu);
    let cpus = plan.cpus;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (u32::from(cpus) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if plan.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            LEAF_TOPOLOGY => {
                // Level 0 (SMT): one thread per core. Level 1 (core): all vCPUs in one package.
                let core_bits = u32::BITS - u32::from(cpus.saturating_sub(1)).leading_zeros();
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = u32::from(cpus);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = apic_id;
            }
            LEAF_AMD_EXT_APIC_ID => e.eax = apic_id,
            _ => {}
        }
    }
}

// MSR numbers (Intel SDM vol. 4; AMD uses the same for these).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it the guest runs with memory uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR values a freshly reset CPU would have, plus write-back default memory type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

// Local APIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let Some(bytes) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut raw = [0u8; 4];
    for (dst, src) in raw.iter_mut().zip(bytes.iter()) {
        *dst = *src as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *dst = src as std::os::raw::c_char;
    }
}

/// CPUID, MSRs, FPU and LAPIC LINT pins, for every vCPU.
pub fn configure_common(
    vcpu: &VcpuFd,
    cpu: u8,
    plan: CpuidPlan,
    supported: &CpuId,
) -> Result<(), CpuError> {
    let mut cpuid = supported.clone();
    patch_cpuid(&mut cpuid, cpu, plan);
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err(cpu, "set CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Msrs {
        cpu,
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err(cpu, "set MSRs"))?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            cpu,
            set,
            wanted: entries.len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err(cpu, "set FPU state"))?;

    // LINT0 receives the legacy PIC (ExtINT), LINT1 the NMI line, as on real boards.
    let mut lapic = vcpu.get_lapic().map_err(kvm_err(cpu, "read LAPIC"))?;
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm_err(cpu, "set LAPIC"))?;
    Ok(())
}

// Control register and EFER bits for long mode.
const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
/// Extension type: set on every CPU since the 486; the PVH entry expects it as hardware does.
const X86_CR0_ET: u64 = 0x10;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT descriptor from flags, base and limit, in the packed hardware layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of a GDT descriptor, as the CPU would load it through `selector = index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let g = bit(55, 1);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32;
    let present = bit(47, 1);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: bit(40, 0xf),
        present,
        dpl: bit(45, 0x3),
        db: bit(54, 1),
        s: bit(44, 1),
        l: bit(53, 1),
        g,
        avl: bit(52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Null, 64-bit code, data, TSS: what the kernel's startup_64 expects to find loaded.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn write_u64s(
    mem: &GuestMemoryMmap,
    what: &'static str,
    at: u64,
    v: &[u64],
) -> Result<(), CpuError> {
    for (i, value) in v.iter().enumerate() {
        let addr = at + (i as u64) * 8;
        mem.write_obj(*value, GuestAddress(addr))
            .map_err(|source| CpuError::Memory { what, addr, source })?;
    }
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel's 64-bit entry,
/// which builds its own tables right away.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write_u64s(mem, "PML4", PML4_START, &[PDPTE_START | PRESENT_RW])?;
    write_u64s(mem, "PDPTE", PDPTE_START, &[PDE_START | PRESENT_RW])?;
    let pdes: Vec<u64> = (0..512u64).map(|i| (i << 21) | PRESENT_RW | HUGE).collect();
    write_u64s(mem, "PDE", PDE_START, &pdes)
}

/// Loads a boot GDT's code (1), data (2) and TSS (3) descriptors, and the GDT and empty IDT
/// themselves, into `sregs`: the part both boot protocols share.
fn load_boot_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    let data = segment_from_gdt(gdt[2], 2);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_gdt(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
}

/// Long-mode segment and control registers for the boot CPU.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    load_boot_segments(&mut sregs, &BOOT_GDT);
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Boot CPU: GDT/IDT and page tables in guest memory, long mode on, RIP at the kernel's
/// 64-bit entry and RSI at the zero page, as the 64-bit boot protocol asks.
pub fn configure_boot_cpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
) -> Result<(), CpuError> {
    write_u64s(mem, "GDT", BOOT_GDT_START, &BOOT_GDT)?;
    write_u64s(mem, "IDT", BOOT_IDT_START, &[0])?;
    write_identity_page_tables(mem)?;
    let sregs = vcpu
        .get_sregs()
        .map_err(kvm_err(0, "read special registers"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(kvm_err(0, "set special registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err(0, "set registers"))
}

/// 32-bit flat code, data and TSS descriptors for the PVH entry (protected mode, no paging).
pub const PVH_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// Boot CPU for the PVH entry: 32-bit protected mode with paging off, EBX at the start info.
pub fn configure_boot_cpu_pvh(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
) -> Result<(), CpuError> {
    write_u64s(mem, "GDT", BOOT_GDT_START, &PVH_GDT)?;
    write_u64s(mem, "IDT", BOOT_IDT_START, &[0])?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_err(0, "read special registers"))?;
    load_boot_segments(&mut sregs, &PVH_GDT);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err(0, "set special registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err(0, "set registers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (code.selector, code.l, code.present, code.type_),
            (8, 1, 1, 0xb)
        );
        assert_eq!((code.base, code.limit, code.g), (0, 0xffff_ffff, 1));
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (data.selector, data.db, data.l, data.type_),
            (16, 1, 0, 0x3)
        );
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn long_mode_sregs_enable_paging_and_lma() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn identity_map_covers_first_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 511 << 21);
    }

    #[test]
    fn cpuid_carries_apic_id_and_count() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        let plan = |cpus, tsc_deadline| CpuidPlan { cpus, tsc_deadline };
        patch_cpuid(&mut cpuid, 3, plan(4, true));
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 4, 3));
        patch_cpuid(&mut cpuid, 0, plan(1, false));
        assert_eq!(cpuid.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(cpuid.as_slice()[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn lapic_delivery_mode_keeps_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x10u8 as std::os::raw::c_char;
        regs[APIC_LVT0 + 1] = 0x07;
        set_apic_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x04);
    }
}
