#!/usr/bin/env bash
# kvm_boot_test.sh POPEK: the Debian guest boot test (guest_test.py) on the
# kvm engine, where KVM can run it in test time. Skips (77) saying why: no
# usable KVM, a KVM that cannot run the guest's 32-bit non-PAE paging
# (kvm_pvm), or one slower than 200 MIPS as measured by `popek kvm-info`.
set -u
popek=$1
here=$(dirname "$0")
info=$("$popek" kvm-info 2>&1)
if [ $? != 0 ]; then
  echo "SKIP: $info"
  exit 77
fi
echo "$info"
flavour=$(sed -n 's/^kvm: usable (\([a-z_]*\)).*/\1/p' <<<"$info")
mips=$(sed -n 's/.*; \([0-9.]*\) MIPS.*/\1/p' <<<"$info")
if [ "$flavour" = kvm_pvm ]; then
  echo "SKIP: this KVM is kvm_pvm ($mips MIPS measured): MOV CR0 setting PG with CR4.PAE clear gets #GP there (tests/guest paging, enter_check), and the i686 Debian kernel uses 32-bit non-PAE paging"
  exit 77
fi
if ! awk -v m="$mips" 'BEGIN { exit !(m >= 200) }'; then
  echo "SKIP: KVM runs $mips MIPS here (a dec/jnz loop); a Linux boot needs >= 200 MIPS to finish in test time"
  exit 77
fi
exec python3 "$here/guest_test.py" "$popek" kvm
