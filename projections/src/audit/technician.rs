//! The sentences of a technician's events: registration, joining and leaving tenants, and
//! offboarding.

use super::names::Names;
use super::Line;
use latchkey_domain::technician::TechnicianEvent;

/// The lines of a technician's event, filed under the technician and the tenant concerned:
/// an offboarding has one per tenant the technician was in, so each tenant's auditors see it.
pub(super) fn lines(names: &Names<'_>, event: &TechnicianEvent) -> latchkey_sql::Result<Vec<Line>> {
    Ok(match event {
        TechnicianEvent::TechnicianRegistered(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = format!(
                "{actor} registered technician {} (username {})",
                e.email, e.username
            );
            vec![Line::new(e.at, actor, sentence).technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianJoinedTenant(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!("{actor} added technician {email} to {tenant}");
            vec![Line::new(e.at, actor, sentence)
                .tenant(e.tenant_id)
                .technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianLeftTenant(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!("{actor} removed technician {email} from {tenant}");
            vec![Line::new(e.at, actor, sentence)
                .tenant(e.tenant_id)
                .technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianOffboarded(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            if e.tenants.is_empty() {
                let sentence = format!("{actor} offboarded technician {email}");
                return Ok(vec![
                    Line::new(e.at, actor, sentence).technician(e.technician_id)
                ]);
            }
            let mut lines = Vec::with_capacity(e.tenants.len());
            for tenant_id in &e.tenants {
                let tenant = names.tenant(&tenant_id.to_string())?;
                let sentence =
                    format!("{actor} offboarded technician {email}, removing them from {tenant}");
                lines.push(
                    Line::new(e.at, actor.clone(), sentence)
                        .tenant(tenant_id)
                        .technician(e.technician_id),
                );
            }
            lines
        }
    })
}
