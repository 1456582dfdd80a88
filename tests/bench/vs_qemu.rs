fn main() { eprintln!("vs_qemu benchmark: not written yet"); }
