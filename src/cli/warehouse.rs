//! `learnvault warehouse grants --bi-user NAME`: the SQL that gives a BI tool
//! (Superset) a read-only ClickHouse user limited to the released tables.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum WarehouseCommand {
    /// Print the SQL creating a read-only user that sees `released.*` only (run it on the ClickHouse server).
    Grants {
        /// The BI user's name.
        #[arg(long)]
        bi_user: String,
    },
}

/// The statements; `user` must be a plain identifier.
pub fn grants(user: &str) -> Option<String> {
    let ok = !user.is_empty() && user.len() <= 64 && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !user.as_bytes()[0].is_ascii_digit();
    ok.then(|| {
        format!(
            "-- A read-only role limited to the released tables (disclosure control applied).\n\
             CREATE ROLE IF NOT EXISTS learnvault_bi;\n\
             GRANT SELECT ON released.* TO learnvault_bi;\n\
             -- The BI user: set its password; nothing else is granted (no agg.*, no events.*).\n\
             -- readonly = 2: no writes, but the driver (clickhouse-connect) may still set its session settings.\n\
             CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY 'CHANGE-ME' SETTINGS readonly = 2;\n\
             GRANT learnvault_bi TO {user};\n\
             SET DEFAULT ROLE learnvault_bi TO {user};\n"
        )
    })
}

pub fn run(cmd: WarehouseCommand) -> anyhow::Result<ExitCode> {
    let WarehouseCommand::Grants { bi_user } = cmd;
    match grants(&bi_user) {
        Some(sql) => {
            print!("{sql}");
            Ok(ExitCode::SUCCESS)
        }
        None => anyhow::bail!("--bi-user must be a plain identifier (letters, digits, _; not starting with a digit)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grants_name_the_released_database_only() {
        let sql = super::grants("superset").unwrap();
        assert!(sql.contains("GRANT SELECT ON released.* TO learnvault_bi"));
        assert!(sql.contains("readonly = 2"));
        for line in sql.lines().filter(|l| l.starts_with("GRANT SELECT")) {
            assert_eq!(line, "GRANT SELECT ON released.* TO learnvault_bi;", "nothing but released.* is readable");
        }
        assert!(super::grants("bad; DROP USER x").is_none());
        assert!(super::grants("1x").is_none());
    }
}
