//! What the kernel lets each host method reach (bridge, macvtap modes), observed with frames.
