//! What netvmm processes that are gone (SIGKILL, a crash) left behind in this network
//! namespace, found the way `netvmm cleanup` finds it, so that `netvmm run` can warn about
//! exactly what cleanup would remove: each kind's own `stale_*` function decides, and its
//! `cleanup_stale` removes what that function returns.

use crate::names::printable;

/// Leftovers by kind, each by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Interfaces marked by an owner that is gone ([`crate::owned::stale_links`]).
    pub links: Vec<String>,
    /// Host-access shims whose users are all gone ([`crate::shim::stale_shims`]).
    pub shims: Vec<String>,
    /// NAT tables of owners that are gone ([`crate::nat::stale_tables`]), by full name.
    pub nat_tables: Vec<String>,
    /// NICs whose ingress qdisc holds a netvmm redirect to no live netvmm tap
    /// ([`crate::tc_redirect::stale_nics`]).
    pub tc_nics: Vec<String>,
}

impl Leftovers {
    /// Looks for every kind. Best effort: a kind that cannot be listed (no CAP_NET_ADMIN
    /// for nf_tables, say) is left out, since this only feeds a warning.
    pub fn find() -> Self {
        Leftovers {
            links: crate::owned::stale_links()
                .map(|ls| ls.into_iter().map(|l| l.name).collect())
                .unwrap_or_default(),
            shims: crate::shim::stale_shims().unwrap_or_default(),
            nat_tables: crate::nat::stale_tables()
                .map(|ts| ts.iter().map(|t| t.name()).collect())
                .unwrap_or_default(),
            tc_nics: crate::tc_redirect::stale_nics()
                .map(|ls| ls.into_iter().map(|l| l.name).collect())
                .unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
            && self.shims.is_empty()
            && self.nat_tables.is_empty()
            && self.tc_nics.is_empty()
    }
}

/// One line naming each thing: `interfaces nvmvt0, nvmvt1; nftables table 'netvmm-nat,...';
/// tc redirect on eth1`. Names are escaped so that the line stays one line.
impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: [(&str, &str, &[String], bool); 4] = [
            ("interface", "interfaces", &self.links, false),
            ("host-access shim", "host-access shims", &self.shims, false),
            ("nftables table", "nftables tables", &self.nat_tables, true),
            ("tc redirect on", "tc redirects on", &self.tc_nics, false),
        ];
        let mut first = true;
        for (one, many, names, quoted) in kinds {
            if names.is_empty() {
                continue;
            }
            let names: Vec<String> = names
                .iter()
                .map(|n| {
                    if quoted {
                        format!("'{}'", printable(n))
                    } else {
                        printable(n)
                    }
                })
                .collect();
            let label = if names.len() == 1 { one } else { many };
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{label} {}", names.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
