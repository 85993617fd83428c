//! Event reports as an admin reads them (`/_synapse/admin/v1/event_reports`).

use moss_storage::{AdminReportRow, Page, ReportFilter};

use crate::{error::Error, Moss, Result};

impl Moss {
    pub async fn admin_reports(&self, filter: ReportFilter, page: Page) -> Result<(Vec<AdminReportRow>, i64)> {
        self.db.read(move |r| Ok::<_, Error>(r.admin_reports(&filter, page)?)).await
    }

    pub async fn admin_report(&self, id: i64) -> Result<AdminReportRow> {
        self.db
            .read(move |r| Ok::<_, Error>(r.admin_report(id)?))
            .await?
            .ok_or_else(|| Error::not_found("Event report not found"))
    }

    pub async fn admin_delete_report(&self, id: i64) -> Result<()> {
        if self.db.write(move |w| Ok::<_, Error>(w.delete_report(id)?)).await? {
            Ok(())
        } else {
            Err(Error::not_found("Event report not found"))
        }
    }
}
