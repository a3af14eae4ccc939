//! `learnvault dsr ...`: subject access and erasure from the command line.
//! The job runs in this process (it opens the warehouse: on the embedded
//! engine, stop `serve` first, or use the API against the running server).

use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{ExternalId, InstitutionId, Pseudonym};
use crate::dsr::{certificate, Kind, Request};
use crate::vault::Subject;
use crate::warehouse::{migrate, Warehouse};

#[derive(Subcommand)]
pub enum DsrCommand {
    /// Subject access (Art. 15): write the archive (tar) of everything held about the learner.
    Access {
        #[command(flatten)]
        subject: SubjectArgs,
        /// Copy the archive here (it also stays in the archive directory until it expires).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erasure (Art. 17): tombstone, delete, recompute aggregates, verify, crypto-shred, certify.
    /// With `--file`, a batch erasure of every subject listed (one job, one pass, a certificate each).
    Erase {
        #[command(flatten)]
        subject: SubjectArgs,
        /// A CSV of subjects of `--institution`: one per line, a pseudonym or an external id
        /// (a first line `pseudonym` or `external_id` is a header and skipped).
        #[arg(long, requires = "institution", conflicts_with_all = ["pseudonym", "external_id"])]
        file: Option<PathBuf>,
        /// Write the signed certificate here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a job.
    Status { job: Uuid },
    /// Check an erasure certificate's signature (against this deployment's key unless --public-key).
    VerifyCertificate {
        file: PathBuf,
        /// Base64 Ed25519 public key (`GET /v1/dsr/certificate-key`).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print the public key that signs erasure certificates.
    CertificateKey,
}

#[derive(Args)]
pub struct SubjectArgs {
    #[arg(long, conflicts_with_all = ["institution", "external_id"])]
    pseudonym: Option<Uuid>,
    #[arg(long)]
    institution: Option<String>,
    #[arg(long, requires = "institution")]
    external_id: Option<String>,
    /// The case or ticket number.
    #[arg(long)]
    reference: Option<String>,
}

pub async fn run(settings: Settings, cmd: DsrCommand) -> anyhow::Result<ExitCode> {
    let master = crate::vault::keys::MasterKey::load(&settings)?;
    let signer = certificate::Signer::derive(&master);
    let (kind, subject, out) = match cmd {
        DsrCommand::CertificateKey => {
            println!("{}", signer.public_key());
            return Ok(ExitCode::SUCCESS);
        }
        DsrCommand::VerifyCertificate { file, public_key } => {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?)
                .context("the file is not JSON")?;
            let key = public_key.unwrap_or_else(|| signer.public_key());
            return Ok(match certificate::verify(&doc, &key) {
                Ok(body) => {
                    println!("valid: erasure certificate of job {} for subject {} signed by {key}", body["job_id"], body["subject"]["pseudonym"]);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("INVALID: {e}");
                    ExitCode::from(1)
                }
            });
        }
        DsrCommand::Status { job } => {
            let (wh, state) = open(&settings).await?;
            let r = state.dsr.as_ref().expect("with warehouse").job(job).await;
            wh.close();
            println!("{}", serde_json::to_string_pretty(&r?)?);
            return Ok(ExitCode::SUCCESS);
        }
        DsrCommand::Access { subject, out } => (Kind::Access, subject, out),
        DsrCommand::Erase { subject, out, file: Some(file) } => return erase_batch(settings, subject, file, out).await,
        DsrCommand::Erase { subject, out, file: None } => (Kind::Erasure, subject, out),
    };
    let ended = run_to_end(&settings, async |state| {
        let pseudonym = match (subject.pseudonym, subject.institution, subject.external_id) {
            (Some(p), _, _) => Pseudonym::from_uuid(p),
            (None, Some(i), Some(e)) => state
                .vault
                .lookup(&InstitutionId::parse(&i)?, &ExternalId::parse(&e)?)
                .await?
                .context("no learner with this external id in this institution")?,
            _ => anyhow::bail!("name the subject with --pseudonym, or --institution and --external-id"),
        };
        let institution = match state.vault.subject(pseudonym).await? {
            Subject::Active { institution } | Subject::Erased { institution, .. } => institution,
            Subject::Unknown => anyhow::bail!("no such pseudonym"),
        };
        let d = state.dsr.as_ref().expect("with warehouse");
        let (job, created) = d.submit(&cli_request(kind, pseudonym.as_uuid(), institution, subject.reference, Vec::new())).await?;
        eprintln!("job {} ({}){}", job.id, job.kind, if created { "" } else { ": an existing request for this subject" });
        run_showing_progress(d, job.id).await
    })
    .await?;
    let Some(job) = ended else { return Ok(ExitCode::from(1)) };
    let result = job.result.clone().unwrap_or_default();
    match kind {
        Kind::Access => {
            let archive = result["archive"].as_str().unwrap_or_default();
            if let Some(out) = out {
                // The archive is sealed at rest: decrypted into `out` (0600) for the operator who ran the request.
                let master = crate::vault::keys::MasterKey::load(&settings)?;
                let keys = crate::dsr::seal::ArchiveKeys::new(master);
                let mut reader = crate::dsr::access::open_archive(std::path::Path::new(archive), &keys, job.id)
                    .with_context(|| format!("opening the sealed archive {archive}"))?;
                let mut file = crate::dsr::seal::create_private(&out).with_context(|| format!("creating {}", out.display()))?;
                std::io::copy(&mut reader, &mut file).with_context(|| format!("decrypting the archive to {}", out.display()))?;
                println!("{}", out.display());
            } else {
                println!("{archive} (sealed; pass --out to write the decrypted tar)");
            }
            eprintln!("sha256 {}", result["sha256"].as_str().unwrap_or_default());
        }
        Kind::ErasureBatch => println!("{}", serde_json::to_string_pretty(&result["certificates"])?),
        Kind::Erasure => {
            write_or_print(out, &serde_json::to_string_pretty(&result["certificate"])?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run job `id` here, its progress on one refreshed line of stderr.
/// A request made at the CLI, by its user (`cli:$USER`, role `cli`).
fn cli_request(kind: Kind, pseudonym: Uuid, institution: String, reference: Option<String>, subjects: Vec<Uuid>) -> Request {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Request {
        kind,
        pseudonym,
        institution,
        requested_by: format!("cli:{user}"),
        roles: vec!["cli".into()],
        request_id: Uuid::new_v4(),
        reference,
        subjects,
    }
}

/// Open the engines, run `work` (which submits a job and runs it), close the warehouse:
/// the job once `done`, or `None` for a job that ended otherwise (reported; exit 1).
async fn run_to_end(settings: &Settings, work: impl AsyncFnOnce(&crate::api::AppState) -> anyhow::Result<crate::dsr::Job>) -> anyhow::Result<Option<crate::dsr::Job>> {
    let (wh, state) = open(settings).await?;
    let result = work(&state).await;
    wh.close();
    let job = result?;
    if job.state != "done" {
        eprintln!("job {} {}: {}", job.id, job.state, job.error.as_deref().unwrap_or(""));
        return Ok(None);
    }
    Ok(Some(job))
}

async fn run_showing_progress(d: &crate::dsr::Dsr, id: Uuid) -> anyhow::Result<crate::dsr::Job> {
    let started = std::time::Instant::now();
    let show = |msg: &str| {
        eprint!("\r\x1b[2K[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    };
    let job = d.run_job(id, &show).await?;
    eprintln!();
    Ok(job)
}

async fn open(settings: &Settings) -> anyhow::Result<(Warehouse, crate::api::AppState)> {
    let state = crate::app::build_state(settings).await?;
    crate::db::migrate(settings).await.context("applying migrations")?;
    let wh = Warehouse::open(settings).map_err(|e| {
        anyhow::anyhow!("{e} (on the embedded engine a running `learnvault serve` holds the data path: stop it, or use POST /v1/dsr/*)")
    })?;
    if let Err(e) = migrate::run(&wh, &settings.warehouse.migrations_dir).await {
        wh.close();
        return Err(e.into());
    }
    let state = crate::app::with_warehouse(state, settings, wh.clone());
    match state {
        Ok(s) => Ok((wh, s)),
        Err(e) => {
            wh.close();
            Err(e)
        }
    }
}

/// `dsr erase --file subjects.csv --institution X`: one batch erasure job.
async fn erase_batch(settings: Settings, subject: SubjectArgs, file: PathBuf, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let inst = InstitutionId::parse(subject.institution.as_deref().context("--institution is required with --file")?)?;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_matches('"'))
        .filter(|l| !l.is_empty())
        .enumerate()
        .filter(|(i, l)| !(*i == 0 && matches!(*l, "pseudonym" | "external_id")))
        .map(|(_, l)| l)
        .collect();
    anyhow::ensure!(!lines.is_empty(), "{}: no subjects", file.display());
    let ended = run_to_end(&settings, async |state| {
        let mut subjects = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            let p = match Uuid::parse_str(l) {
                Ok(u) => Pseudonym::from_uuid(u),
                Err(_) => state
                    .vault
                    .lookup(&inst, &ExternalId::parse(l)?)
                    .await?
                    .with_context(|| format!("line {}: no learner with this external id in this institution", i + 1))?,
            };
            match state.vault.subject(p).await? {
                Subject::Active { institution } | Subject::Erased { institution, .. } if institution == inst.as_str() => {}
                _ => anyhow::bail!("line {}: no such pseudonym in this institution", i + 1),
            }
            subjects.push(p.as_uuid());
        }
        subjects.sort();
        subjects.dedup();
        let d = state.dsr.as_ref().expect("with warehouse");
        let request = cli_request(Kind::ErasureBatch, Uuid::nil(), inst.as_str().to_owned(), subject.reference, subjects);
        let (job, _) = d.submit(&request).await?;
        eprintln!("job {} (erasure_batch, {} subjects)", job.id, job.progress["subjects"].as_array().map_or(0, Vec::len));
        run_showing_progress(d, job.id).await
    })
    .await?;
    let Some(job) = ended else { return Ok(ExitCode::from(1)) };
    write_or_print(out, &serde_json::to_string_pretty(&job.result.unwrap_or_default()["certificates"])?)?;
    Ok(ExitCode::SUCCESS)
}

/// `text` written to `out` (whose path is then printed), or printed when there is no `out`.
fn write_or_print(out: Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(out) => {
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}
