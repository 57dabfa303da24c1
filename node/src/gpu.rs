//! The GPU as its driver reports it (NVML): what the hello says of it, the readings heartbeats
//! and `/metrics` carry, and the health rules on them. NVML is loaded at run time, so a node
//! without the driver, or on the CPU, works without it and says why in its hello.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use proto::{GpuInfo, GpuReadings};

use crate::metrics::{GpuGauges, NodeMetrics};

/// XIDs an application causes (a graphics engine exception, a memory page fault, a stopped
/// channel, a preemptive cleanup, an NVDEC error, a context-switch timeout): they say nothing of
/// the GPU. Every other XID marks it unhealthy, as the Kubernetes NVIDIA device plugin does.
const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];
/// How often the GPU is read; XID and ECC events are seen at once.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Which GPU the node reports on, and where the driver's library is.
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// The GPU whose readings and health the node reports (NVML): `auto` (the CUDA device's, as
    /// CUDA_VISIBLE_DEVICES names it; none on the CPU), an index as NVML counts, a UUID
    /// (`GPU-…`), or `none`.
    #[arg(long = "gpu", env = "NVML_GPU", default_value = "auto")]
    pub which: String,
    /// The driver's NVML library (default: `libnvidia-ml.so.1` from the loader's path).
    #[arg(long, env = "NVML_LIBRARY")]
    pub nvml_library: Option<std::path::PathBuf>,
}

/// A GPU NVML answers for. NVML lives as long as the process (it is opened once).
#[derive(Clone, Copy)]
pub struct Gpu {
    nvml: &'static Nvml,
    index: u32,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.index)
    }
}

/// Opens the GPU `args` name for a node computing on `device`; the error is the reason the hello
/// gives for naming none.
pub fn open(args: &GpuArgs, device: tch::Device) -> Result<(Gpu, GpuInfo), String> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let target = target(&args.which, device, visible.as_deref())?;
    let mut builder = Nvml::builder();
    let path: OsString;
    if let Some(lib) = &args.nvml_library {
        path = lib.clone().into_os_string();
        builder.lib_path(&path);
    }
    let nvml = builder.init().map_err(|e| format!("NVML could not be loaded: {e}"))?;
    let nvml: &'static Nvml = Box::leak(Box::new(nvml));
    let device = match &target {
        Target::Index(i) => nvml.device_by_index(*i),
        Target::Uuid(uuid) => nvml.device_by_uuid(uuid.as_str()),
    }
    .map_err(|e| format!("NVML has no GPU {target}: {e}"))?;
    let info = describe(nvml, &device)
        .map_err(|e| format!("NVML could not describe GPU {target}: {e}"))?;
    let index = device.index().map_err(|e| format!("NVML has no index for GPU {target}: {e}"))?;
    Ok((Gpu { nvml, index }, info))
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Index(u32),
    Uuid(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::Uuid(u) => f.write_str(u),
        }
    }
}

/// The GPU `--gpu` names. `auto` follows the CUDA device: CUDA numbers the GPUs that
/// CUDA_VISIBLE_DEVICES lists (indices or UUIDs) in its order, NVML numbers all of them.
fn target(which: &str, device: tch::Device, visible: Option<&str>) -> Result<Target, String> {
    let named = |entry: &str| match entry.parse() {
        Ok(i) => Target::Index(i),
        Err(_) => Target::Uuid(entry.to_owned()),
    };
    match (which, device) {
        ("none", _) => Err("GPU readings are off (--gpu none)".into()),
        ("auto", tch::Device::Cuda(n)) => match visible {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .nth(n)
                .filter(|e| !e.is_empty())
                .map(named)
                .ok_or_else(|| format!("CUDA_VISIBLE_DEVICES ({list}) names no CUDA device {n}")),
            None => Ok(Target::Index(n as u32)),
        },
        ("auto", _) => Err("no CUDA device: the node runs on the CPU".into()),
        (other, _) => Ok(named(other)),
    }
}

fn describe(nvml: &Nvml, device: &Device) -> Result<GpuInfo, NvmlError> {
    let cuda = nvml.sys_cuda_driver_version()?;
    Ok(GpuInfo {
        name: device.name()?,
        uuid: device.uuid()?,
        memory_total_bytes: device.memory_info()?.total,
        driver_version: nvml.sys_driver_version()?,
        cuda_version: format!("{}.{}", cuda / 1000, (cuda % 1000) / 10),
    })
}

/// A reading the GPU may not support: absent then, rather than a failed query.
fn optional<T>(reading: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match reading {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Gpu {
    fn device(&self) -> Result<Device<'static>, NvmlError> {
        self.nvml.device_by_index(self.index)
    }

    /// Device memory free now, in bytes.
    pub fn free_memory(&self) -> anyhow::Result<u64> {
        Ok(self.device()?.memory_info()?.free)
    }

    /// Everything a heartbeat carries but the XID count, which the watch keeps.
    fn read(&self) -> Result<GpuReadings, NvmlError> {
        let d = self.device()?;
        let memory = d.memory_info()?;
        let watts = |mw: Option<u32>| mw.map(|mw| f64::from(mw) / 1000.0);
        Ok(GpuReadings {
            utilization_percent: d.utilization_rates()?.gpu,
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            temperature_celsius: d.temperature(TemperatureSensor::Gpu)?,
            slowdown_temperature_celsius: optional(
                d.temperature_threshold(TemperatureThreshold::Slowdown),
            )?,
            power_watts: watts(optional(d.power_usage())?),
            power_limit_watts: watts(optional(d.enforced_power_limit())?),
            ecc_uncorrected_errors: optional(
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            )?,
            xid_errors: 0,
            last_xid: None,
        })
    }

    /// Reads the GPU every second on a thread of its own, for as long as the process runs, and
    /// keeps what heartbeats and `/metrics` show.
    pub fn watch(self, metrics: Arc<NodeMetrics>) -> std::io::Result<()> {
        let gauges = metrics.gpu_gauges();
        std::thread::Builder::new().name("gpu-watch".into()).spawn(move || {
            let events = self.device().and_then(|d| {
                let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
                let types = d.supported_event_types()? & wanted;
                d.register_events(types, self.nvml.create_event_set()?).map_err(|e| e.error)
            });
            if let Err(e) = &events {
                tracing::warn!(error = %e, "no XID or ECC events from NVML; readings only");
            }
            let mut rules = Rules::default();
            loop {
                let reading = self.read().map_err(|e| e.to_string());
                let latest = rules.judge(reading);
                gauges.show(&latest);
                *metrics.gpu.latest.lock().expect("gpu lock") = Some(latest);
                match &events {
                    Ok(set) => match set.wait(READ_EVERY.as_millis() as u32) {
                        Ok(event) if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) => {
                            let xid = match event.event_data {
                                Some(XidError::Value(xid)) => Some(xid),
                                _ => None,
                            };
                            rules.xid(xid);
                            gauges.xid_errors.inc();
                        }
                        // An ECC event shows in the count read next.
                        Ok(_) | Err(NvmlError::Timeout) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting for NVML events failed");
                            std::thread::sleep(READ_EVERY);
                        }
                    },
                    Err(_) => std::thread::sleep(READ_EVERY),
                }
            }
        })?;
        Ok(())
    }
}

/// What the watch last saw: the readings (none where the query failed) and why the GPU should
/// take no work, if it should not.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub readings: Option<GpuReadings>,
    pub unhealthy: Option<String>,
}

/// The GPU's latest state, for heartbeats.
#[derive(Debug, Default)]
pub struct GpuState {
    latest: Mutex<Option<Latest>>,
}

impl GpuState {
    /// The latest state; none before the first reading or where no GPU is watched.
    pub fn latest(&self) -> Option<Latest> {
        self.latest.lock().expect("gpu lock").clone()
    }
}

/// The health rules: a critical XID takes the GPU out until it is reset (the node restarts with
/// it); an uncorrectable ECC error since the driver loaded, a temperature at the slowdown
/// threshold and a failed query take it out while they last.
#[derive(Debug, Default)]
struct Rules {
    xid_errors: u64,
    last_xid: Option<u64>,
    /// Why the first critical XID takes the GPU out, once one came.
    critical: Option<String>,
}

impl Rules {
    /// An XID event; `None` where the driver did not say which.
    fn xid(&mut self, xid: Option<u64>) {
        self.xid_errors += 1;
        self.last_xid = xid.or(self.last_xid);
        if self.critical.is_some() {
            return;
        }
        self.critical = match xid {
            Some(x) if APPLICATION_XIDS.contains(&x) => None,
            Some(x) => Some(format!(
                "critical XID error {x}: the GPU needs a reset and the node a restart"
            )),
            None => Some(
                "a critical XID error (unnamed by the driver): the GPU needs a reset and the \
                 node a restart"
                    .to_owned(),
            ),
        };
    }

    fn judge(&self, reading: Result<GpuReadings, String>) -> Latest {
        let reading = reading.map(|r| GpuReadings {
            xid_errors: self.xid_errors,
            last_xid: self.last_xid,
            ..r
        });
        let unhealthy = match (&reading, &self.critical) {
            (_, Some(why)) => Some(why.clone()),
            (Err(e), None) => Some(format!("NVML query failed: {e}")),
            (Ok(r), None) => match (r.ecc_uncorrected_errors, r.slowdown_temperature_celsius) {
                (Some(n), _) if n > 0 => Some(format!(
                    "{n} uncorrectable ECC error(s) since the driver loaded: the GPU needs a reset"
                )),
                (_, Some(limit)) if r.temperature_celsius >= limit => Some(format!(
                    "GPU at {} °C, at or above its slowdown threshold of {limit} °C",
                    r.temperature_celsius
                )),
                _ => None,
            },
        };
        Latest { readings: reading.ok(), unhealthy }
    }
}

impl GpuGauges {
    fn show(&self, latest: &Latest) {
        self.healthy.set(i64::from(latest.unhealthy.is_none()));
        let Some(r) = &latest.readings else { return };
        self.utilization.set(f64::from(r.utilization_percent) / 100.0);
        self.memory_used.set(r.memory_used_bytes as i64);
        self.memory_total.set(r.memory_total_bytes as i64);
        self.temperature.set(i64::from(r.temperature_celsius));
        if let Some(t) = r.slowdown_temperature_celsius {
            self.slowdown_temperature.set(i64::from(t));
        }
        if let Some(w) = r.power_watts {
            self.power.set(w);
        }
        if let Some(w) = r.power_limit_watts {
            self.power_limit.set(w);
        }
        if let Some(n) = r.ecc_uncorrected_errors {
            self.ecc_uncorrected.set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cool() -> GpuReadings {
        GpuReadings {
            utilization_percent: 50,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 80 << 30,
            temperature_celsius: 60,
            slowdown_temperature_celsius: Some(90),
            power_watts: Some(300.0),
            power_limit_watts: Some(700.0),
            ecc_uncorrected_errors: Some(0),
            xid_errors: 0,
            last_xid: None,
        }
    }

    #[test]
    fn auto_follows_the_cuda_device_as_cuda_visible_devices_names_it() {
        let cuda = |n| tch::Device::Cuda(n);
        assert_eq!(target("auto", cuda(1), None), Ok(Target::Index(1)));
        assert_eq!(target("auto", cuda(1), Some("3,5")), Ok(Target::Index(5)));
        let uuids = Some("GPU-aaaa, GPU-bbbb");
        assert_eq!(target("auto", cuda(1), uuids), Ok(Target::Uuid("GPU-bbbb".into())));
        assert!(target("auto", cuda(2), Some("3,5"))
            .unwrap_err()
            .contains("names no CUDA device 2"));
        assert_eq!(
            target("auto", tch::Device::Cpu, None),
            Err("no CUDA device: the node runs on the CPU".into())
        );
        assert_eq!(target("2", tch::Device::Cpu, None), Ok(Target::Index(2)));
        assert_eq!(target("GPU-cc", cuda(0), None), Ok(Target::Uuid("GPU-cc".into())));
        assert!(target("none", cuda(0), None).unwrap_err().contains("off"));
    }

    #[test]
    fn heat_and_failed_queries_take_the_gpu_out_while_they_last() {
        let rules = Rules::default();
        assert_eq!(rules.judge(Ok(cool())).unhealthy, None);
        let hot = GpuReadings { temperature_celsius: 90, ..cool() };
        let verdict = rules.judge(Ok(hot));
        assert_eq!(
            verdict.unhealthy.as_deref(),
            Some("GPU at 90 °C, at or above its slowdown threshold of 90 °C")
        );
        assert_eq!(verdict.readings.map(|r| r.temperature_celsius), Some(90));
        let no_threshold =
            GpuReadings { temperature_celsius: 95, slowdown_temperature_celsius: None, ..cool() };
        assert_eq!(rules.judge(Ok(no_threshold)).unhealthy, None, "no threshold known: no rule");
        let failed = rules.judge(Err("Unknown Error".into()));
        assert_eq!(
            failed,
            Latest { readings: None, unhealthy: Some("NVML query failed: Unknown Error".into()) }
        );
        assert_eq!(rules.judge(Ok(cool())).unhealthy, None, "back once the query works");
        let ecc = GpuReadings { ecc_uncorrected_errors: Some(2), ..cool() };
        assert!(rules.judge(Ok(ecc)).unhealthy.unwrap().starts_with("2 uncorrectable ECC"));
    }

    #[test]
    fn a_critical_xid_takes_the_gpu_out_for_good_and_an_application_one_does_not() {
        let mut rules = Rules::default();
        rules.xid(Some(13));
        rules.xid(Some(31));
        let after_app = rules.judge(Ok(cool()));
        assert_eq!(after_app.unhealthy, None, "application faults say nothing of the GPU");
        let counted = after_app.readings.unwrap();
        assert_eq!((counted.xid_errors, counted.last_xid), (2, Some(31)));
        rules.xid(Some(79));
        rules.xid(Some(13));
        let verdict = rules.judge(Ok(cool()));
        assert_eq!(
            verdict.unhealthy.as_deref(),
            Some("critical XID error 79: the GPU needs a reset and the node a restart")
        );
        assert_eq!(verdict.readings.map(|r| (r.xid_errors, r.last_xid)), Some((4, Some(13))));
        let mut unnamed = Rules::default();
        unnamed.xid(None);
        assert!(unnamed.judge(Ok(cool())).unhealthy.unwrap().contains("unnamed"));
    }
}
