# What every lab scenario of these tests starts with (tests/common/mod.rs puts it first).

# v FILE KEY: the first KEY=value a guest printed on its console, saved in FILE.
v() { tr -d '\r' < "$1" | sed -n "s/^$2=//p" | head -n 1; }
# nic FILE KEY: KEY's value in eth0's exit report, in the netvmm stderr saved in FILE.
nic() { grep "netvmm-nic-report: eth0 " "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# lab_fault STATUS ERR LOG: names the fault of the emulated lab (resources/README.md) that
# a `NETVMM_BOOT_REPORT=1 netvmm run` exiting with STATUS met, its stderr in ERR and its
# guest's console in LOG; prints nothing when netvmm may be at fault, and then the case
# fails.
# - silent-triple-fault: the guest triple-faulted without a word from its kernel (no panic,
#   oops or BUG line): the lab's stress loop shows such crashes with no device in use.
# - missed-interrupt (virtio-mmio only): the timeout, with InterruptStatus still pending in
#   eth0's exit report: the guest stopped taking an interrupt netvmm raised. The bit is
#   netvmm's own raise even under vhost (the kernel's signals do not set it). virtio-pci's
#   ISR is set on every raise and never read under MSI-X, so it says nothing there.
lab_fault() {
  # Not `nic`: a scenario may define its own.
  report=$(grep "netvmm-nic-report: eth0 " "$2" | tr ' ' '\n')
  if [ "$1" = 3 ] && grep -q 'triple-faulted' "$2" &&
    ! grep -q -e 'Kernel panic' -e 'Oops' -e 'BUG:' "$3"; then
    echo silent-triple-fault
  elif [ "$1" = 124 ] && echo "$report" | grep -qx transport=mmio; then
    i=$(echo "$report" | sed -n 's/^isr=//p')
    [ -n "$i" ] && [ "$i" != 0 ] && echo missed-interrupt
  fi
  return 0
}

# lab_guest CASE ARGS...: `netvmm run ARGS...` (the scenario passes its kernel and initrd)
# for a guest that runs its command and exits, with the exit report: its console in
# /tmp/CASE.log and netvmm's stderr in /tmp/CASE.err, where `lab_try CASE` looks.
lab_guest() {
  lg_case=$1; shift
  NETVMM_BOOT_REPORT=1 netvmm run "$@" --serial-log /tmp/$lg_case.log >/dev/null 2>/tmp/$lg_case.err
}

# lab_run CASE ARGS...: `lab_guest CASE ARGS...` through `lab_try CASE`.
lab_run() { lab_try "$1" lab_guest "$@"; }

# lab_try CASE CMD...: runs CMD (which boots one guest: netvmm's stderr in /tmp/CASE.err,
# the guest's console in /tmp/CASE.log) and, once more, when `lab_fault` names how it ended,
# printing the first try as rerun=CASE (the test says it and keeps it); a failed try shows
# its stderr and console tail. Leaves the status in $s and the tries in $try.
lab_try() {
  lt_case=$1; shift
  for try in 1 2; do
    "$@"
    s=$?
    [ $s = 0 ] || { cat /tmp/$lt_case.err; tail -n 40 /tmp/$lt_case.log; }
    why=$(lab_fault $s /tmp/$lt_case.err /tmp/$lt_case.log)
    [ $try = 1 ] && [ -n "$why" ] || break
    echo "rerun=$lt_case why=$why $(grep -e 'triple-faulted' -e 'netvmm-nic-report: eth0 ' /tmp/$lt_case.err | tr ' ' _ | tr '\n' ' ')"
  done
}
