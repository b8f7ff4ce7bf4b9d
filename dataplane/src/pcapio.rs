//! Reading and writing classic pcap files, with errors that name the file and the offset.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a pcap file ({why})")]
    NotPcap { path: PathBuf, why: String },
    #[error("{path}: corrupt pcap at byte {offset} (packet {index}): {why}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        index: u64,
        why: String,
    },
    #[error("{path}: link type {linktype:?} is not Ethernet; CHC reads Ethernet captures")]
    LinkType { path: PathBuf, linktype: DataLink },
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts_ns: u64,
    pub wire_len: u32,
    pub data: Vec<u8>,
}

/// Reads records one at a time.
pub struct Reader {
    path: PathBuf,
    inner: PcapReader<BufReader<File>>,
    offset: u64,
    index: u64,
    pub header: PcapHeader,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, PcapError> {
        let io = |cause| PcapError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let mut f = File::open(path).map_err(io)?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(io)?;
        if n < 4 {
            return Err(PcapError::NotPcap {
                path: path.to_path_buf(),
                why: format!("only {n} bytes"),
            });
        }
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            return Err(PcapError::NotPcap {
                path: path.to_path_buf(),
                why: "this is pcapng; convert it with `editcap -F pcap IN OUT`".into(),
            });
        }
        let f = File::open(path).map_err(io)?;
        let inner = PcapReader::new(BufReader::with_capacity(1 << 20, f)).map_err(|e| {
            PcapError::NotPcap {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        })?;
        let header = inner.header();
        if header.datalink != DataLink::ETHERNET {
            return Err(PcapError::LinkType {
                path: path.to_path_buf(),
                linktype: header.datalink,
            });
        }
        Ok(Reader {
            path: path.to_path_buf(),
            inner,
            offset: 24,
            index: 0,
            header,
        })
    }

    /// The next record into `buf` (reused); `Ok(None)` at the end of the file.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<(u64, u32)>, PcapError> {
        // Raw records, checked here: the crate's own check refuses headers-only captures
        // (a wire length above the snap length is normal there).
        let (path, offset, index) = (self.path.clone(), self.offset, self.index);
        let corrupt = |why: String| PcapError::Corrupt {
            path,
            offset,
            index,
            why,
        };
        match self.inner.next_raw_packet() {
            None => Ok(None),
            Some(Ok(p)) => {
                if p.incl_len as usize != p.data.len() || p.incl_len > (1 << 18) {
                    return Err(corrupt(format!(
                        "record length {} is implausible",
                        p.incl_len
                    )));
                }
                let frac = match self.header.ts_resolution {
                    pcap_file::TsResolution::MicroSecond => u64::from(p.ts_frac) * 1000,
                    pcap_file::TsResolution::NanoSecond => u64::from(p.ts_frac),
                };
                if frac >= 1_000_000_000 {
                    return Err(corrupt(format!(
                        "timestamp fraction {} is out of range",
                        p.ts_frac
                    )));
                }
                buf.clear();
                buf.extend_from_slice(&p.data);
                let ts = u64::from(p.ts_sec) * 1_000_000_000 + frac;
                self.offset += 16 + p.data.len() as u64;
                self.index += 1;
                Ok(Some((ts, p.orig_len.max(p.incl_len))))
            }
            Some(Err(e)) => Err(corrupt(e.to_string())),
        }
    }

    pub fn next_record(&mut self) -> Result<Option<Record>, PcapError> {
        let mut data = Vec::new();
        Ok(self.next_into(&mut data)?.map(|(ts_ns, wire_len)| Record {
            ts_ns,
            wire_len,
            data,
        }))
    }
}

/// Reads a whole file.
pub fn read_all(path: &Path) -> Result<Vec<Record>, PcapError> {
    let mut r = Reader::open(path)?;
    let mut v = Vec::new();
    while let Some(rec) = r.next_record()? {
        v.push(rec);
    }
    Ok(v)
}

/// Writes records.
pub struct Writer {
    path: PathBuf,
    inner: PcapWriter<BufWriter<File>>,
    pub written: u64,
}

impl Writer {
    /// Creates `path` with nanosecond timestamps and the given snap length.
    pub fn create(path: &Path, snaplen: u32) -> Result<Writer, PcapError> {
        let io = |cause| PcapError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let f = File::create(path).map_err(io)?;
        let header = PcapHeader {
            snaplen: snaplen.max(65535),
            datalink: DataLink::ETHERNET,
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..Default::default()
        };
        let inner =
            PcapWriter::with_header(BufWriter::with_capacity(1 << 20, f), header).map_err(|e| {
                PcapError::Io {
                    path: path.to_path_buf(),
                    cause: std::io::Error::other(e.to_string()),
                }
            })?;
        Ok(Writer {
            path: path.to_path_buf(),
            inner,
            written: 0,
        })
    }

    pub fn write(&mut self, ts_ns: u64, wire_len: u32, data: &[u8]) -> Result<(), PcapError> {
        let p = PcapPacket::new(
            Duration::from_nanos(ts_ns),
            wire_len.max(data.len() as u32),
            data,
        );
        self.inner.write_packet(&p).map_err(|e| PcapError::Io {
            path: self.path.clone(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        self.written += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<u64, PcapError> {
        let n = self.written;
        let path = self.path.clone();
        let mut w = self.inner.into_writer();
        std::io::Write::flush(&mut w).map_err(|cause| PcapError::Io { path, cause })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_located() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.pcap");
        let mut w = Writer::create(&p, 65535).unwrap();
        for i in 0..5u8 {
            w.write(u64::from(i) * 1_000_000_007, 100, &[i; 60])
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 5);
        let recs = read_all(&p).unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[3].ts_ns, 3 * 1_000_000_007);
        assert_eq!(recs[3].wire_len, 100);
        assert_eq!(recs[3].data, vec![3u8; 60]);
        // Cut the file in the middle of the third record's data.
        let bytes = std::fs::read(&p).unwrap();
        let cut = 24 + 2 * (16 + 60) + 16 + 10;
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = read_all(&p).unwrap_err().to_string();
        assert!(
            err.contains("a.pcap") && err.contains("byte 176") && err.contains("packet 2"),
            "{err}"
        );
        std::fs::write(&p, b"garbage!").unwrap();
        assert!(read_all(&p).unwrap_err().to_string().contains("not a pcap"));
        std::fs::write(&p, [0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0]).unwrap();
        assert!(read_all(&p).unwrap_err().to_string().contains("pcapng"));
    }
}
