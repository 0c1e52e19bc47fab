//! Who holds which technician username and e-mail address. A username becomes the account
//! `msp-<username>` on every computer, and the e-mail address names the technician in the
//! audit trail, so each may be held by one technician only, for good: names are never
//! released, not even by offboarding (old accounts and audit lines still name them).
//!
//! All names live in one stream, so a registration claims its username and its e-mail
//! address in one append, and of two servers claiming the same name at once exactly one wins
//! (the other's append fails the expected-revision check and is decided again, now refused).
//! E-mail addresses are compared without regard to case; usernames are lowercase already.

use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::TechnicianId;
use crate::names::{Email, Username};
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The one stream of [`TechnicianNames`].
pub const STREAM: &str = "technician_names-all";

/// The names taken so far. `imported` tells whether the technicians registered before this
/// stream existed have been considered: recorded by [`TechnicianNamesImported`], or there were
/// none when the first claim was decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TechnicianNames {
    imported: bool,
    usernames: BTreeMap<Username, TechnicianId>,
    /// By the address folded to lowercase.
    emails: BTreeMap<String, TechnicianId>,
}

/// The key an e-mail address is compared by: `Nik@NikPot.com` and `nik@nikpot.com` are one.
pub fn email_key(email: &Email) -> String {
    email.as_str().to_lowercase()
}

impl TechnicianNames {
    /// Whether the technicians registered before this stream existed are in it already.
    pub fn imported(&self) -> bool {
        self.imported
    }

    /// The technician holding `username`, if any.
    pub fn username_holder(&self, username: &Username) -> Option<TechnicianId> {
        self.usernames.get(username).copied()
    }

    /// The technician holding `email` (in any case), if any.
    pub fn email_holder(&self, email: &Email) -> Option<TechnicianId> {
        self.emails.get(&email_key(email)).copied()
    }

    fn hold(&mut self, holder: &NameHolder) {
        // A name two technicians got before names were unique stays with the first.
        self.usernames
            .entry(holder.username.clone())
            .or_insert(holder.technician_id);
        self.emails
            .entry(email_key(&holder.email))
            .or_insert(holder.technician_id);
    }
}

/// A technician with their username and e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameHolder {
    pub technician_id: TechnicianId,
    pub username: Username,
    pub email: Email,
}

#[derive(Debug, Clone)]
pub enum TechnicianNamesCommand {
    /// Claims a new technician's username and e-mail address. `existing` is every technician
    /// registered so far, which the caller reads from the log when [`TechnicianNames::imported`]
    /// is false (before the first claim); it is ignored afterwards.
    Claim {
        holder: NameHolder,
        existing: Vec<NameHolder>,
        by: Actor,
        at: Timestamp,
    },
}

/// A technician's username and e-mail address are theirs from now on. The technician
/// stream's `TechnicianRegistered` follows (a process manager completes it if the server
/// stopped in between).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianNamesClaimed {
    pub technician_id: TechnicianId,
    pub username: Username,
    pub email: Email,
    pub by: Actor,
    pub at: Timestamp,
}

/// The technicians registered before names were claimed here, recorded once, before the
/// first claim, so their names stay taken too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianNamesImported {
    pub technicians: Vec<NameHolder>,
    pub at: Timestamp,
}

domain_events!(
    /// Everything that happens to the technicians' names.
    TechnicianNamesEvent {
        TechnicianNamesClaimed = "TechnicianNamesClaimed" v 1,
        TechnicianNamesImported = "TechnicianNamesImported" v 1,
    }
);

impl Aggregate for TechnicianNames {
    type Command = TechnicianNamesCommand;
    type Event = TechnicianNamesEvent;
    const CATEGORY: &'static str = "technician_names";

    fn decide(
        state: &Self,
        command: TechnicianNamesCommand,
    ) -> Result<Vec<TechnicianNamesEvent>, DomainError> {
        let TechnicianNamesCommand::Claim {
            holder,
            existing,
            by,
            at,
        } = command;
        let mut events = Vec::new();
        let mut names = state.clone();
        // Nothing to record when no technician came before (a new installation); the claim
        // itself then marks the names as imported.
        if !names.imported && !existing.is_empty() {
            let imported = TechnicianNamesImported {
                technicians: existing,
                at,
            };
            names = Self::evolve(names, &imported.clone().into());
            events.push(imported.into());
        }
        let mine = Some(holder.technician_id);
        let username = names.username_holder(&holder.username);
        let email = names.email_holder(&holder.email);
        if username.is_some() && username != mine {
            return Err(DomainError::UsernameTaken {
                username: holder.username,
            });
        }
        if email.is_some() && email != mine {
            return Err(DomainError::EmailTaken {
                email: holder.email,
            });
        }
        // Both already this technician's: a repeated claim.
        if username.is_none() || email.is_none() {
            events.push(
                TechnicianNamesClaimed {
                    technician_id: holder.technician_id,
                    username: holder.username,
                    email: holder.email,
                    by,
                    at,
                }
                .into(),
            );
        }
        Ok(events)
    }

    fn evolve(mut state: Self, event: &TechnicianNamesEvent) -> Self {
        match event {
            TechnicianNamesEvent::TechnicianNamesImported(e) => {
                state.imported = true;
                e.technicians.iter().for_each(|h| state.hold(h));
            }
            TechnicianNamesEvent::TechnicianNamesClaimed(e) => {
                // A claim is decided only after the earlier technicians were considered.
                state.imported = true;
                state.hold(&NameHolder {
                    technician_id: e.technician_id,
                    username: e.username.clone(),
                    email: e.email.clone(),
                });
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{admin, ann_id, given, nik_id, t};

    fn holder(id: TechnicianId, username: &str, email: &str) -> NameHolder {
        NameHolder {
            technician_id: id,
            username: Username::parse(username).unwrap(),
            email: Email::parse(email).unwrap(),
        }
    }

    fn claim(id: TechnicianId, username: &str, email: &str) -> TechnicianNamesCommand {
        TechnicianNamesCommand::Claim {
            holder: holder(id, username, email),
            existing: vec![],
            by: admin(),
            at: t(1),
        }
    }

    fn claimed(id: TechnicianId, username: &str, email: &str) -> TechnicianNamesEvent {
        TechnicianNamesClaimed {
            technician_id: id,
            username: Username::parse(username).unwrap(),
            email: Email::parse(email).unwrap(),
            by: admin(),
            at: t(1),
        }
        .into()
    }

    fn imported(technicians: Vec<NameHolder>) -> TechnicianNamesEvent {
        TechnicianNamesImported {
            technicians,
            at: t(0),
        }
        .into()
    }

    #[test]
    fn the_first_claim_records_the_technicians_registered_before_it() {
        let before = holder(ann_id(), "ann", "ann@nikpot.com");
        given::<TechnicianNames>([])
            .when(TechnicianNamesCommand::Claim {
                holder: holder(nik_id(), "nik", "nik@nikpot.com"),
                existing: vec![before.clone()],
                by: admin(),
                at: t(1),
            })
            .then_expect([
                TechnicianNamesImported {
                    technicians: vec![before],
                    at: t(1),
                }
                .into(),
                claimed(nik_id(), "nik", "nik@nikpot.com"),
            ]);
    }

    #[test]
    fn on_a_new_installation_the_first_claim_is_all_there_is() {
        given::<TechnicianNames>([])
            .when(claim(nik_id(), "nik", "nik@nikpot.com"))
            .then_expect([claimed(nik_id(), "nik", "nik@nikpot.com")]);
        let names = TechnicianNames::replay(&[claimed(nik_id(), "nik", "nik@nikpot.com")]);
        assert!(names.imported(), "no earlier technicians to record later");
    }

    #[test]
    fn a_username_is_held_by_one_technician_only() {
        given::<TechnicianNames>([imported(vec![]), claimed(nik_id(), "nik", "nik@nikpot.com")])
            .when(claim(ann_id(), "nik", "other@nikpot.com"))
            .then_expect_error(DomainError::UsernameTaken {
                username: Username::parse("nik").unwrap(),
            });
    }

    #[test]
    fn an_email_address_is_held_by_one_technician_only_whatever_its_case() {
        given::<TechnicianNames>([imported(vec![]), claimed(nik_id(), "nik", "nik@nikpot.com")])
            .when(claim(ann_id(), "ann", "Nik@NikPot.COM"))
            .then_expect_error(DomainError::EmailTaken {
                email: Email::parse("Nik@NikPot.COM").unwrap(),
            });
    }

    #[test]
    fn the_names_of_technicians_registered_before_are_taken_too() {
        given::<TechnicianNames>([imported(vec![holder(ann_id(), "ann", "ann@nikpot.com")])])
            .when(claim(nik_id(), "ann", "nik@nikpot.com"))
            .then_expect_error(DomainError::UsernameTaken {
                username: Username::parse("ann").unwrap(),
            });
        // Once imported, a later claim's `existing` is ignored.
        given::<TechnicianNames>([imported(vec![])])
            .when(TechnicianNamesCommand::Claim {
                holder: holder(nik_id(), "nik", "nik@nikpot.com"),
                existing: vec![holder(ann_id(), "nik", "ann@nikpot.com")],
                by: admin(),
                at: t(1),
            })
            .then_expect([claimed(nik_id(), "nik", "nik@nikpot.com")]);
    }

    #[test]
    fn claiming_the_same_names_again_for_the_same_technician_changes_nothing() {
        given::<TechnicianNames>([imported(vec![]), claimed(nik_id(), "nik", "nik@nikpot.com")])
            .when(claim(nik_id(), "nik", "NIK@nikpot.com"))
            .then_expect_nothing();
    }

    #[test]
    fn names_are_never_released() {
        // Nothing in this stream gives a name back: an offboarded technician keeps theirs,
        // since computers still have their `msp-<username>` account and the audit trail names
        // them by e-mail address.
        let names = TechnicianNames::replay(&[
            imported(vec![]),
            claimed(nik_id(), "nik", "nik@nikpot.com"),
        ]);
        assert_eq!(
            names.username_holder(&Username::parse("nik").unwrap()),
            Some(nik_id())
        );
    }
}
