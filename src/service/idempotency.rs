//! Idempotency: `op_id`s of mutations (persisted with the change) and of
//! crypto operations (answers remembered in memory), and the request hash
//! that tells a retry from a different request.
use super::*;

/// A remembered answer to a crypto operation that carried an `op_id`.
pub(super) enum CachedAnswer {
    Sign(proto::SignResponse),
    Wrap(proto::WrapResponse),
    DataKey(proto::GenerateDataKeyResponse),
}

impl Drop for CachedAnswer {
    fn drop(&mut self) {
        if let CachedAnswer::DataKey(r) = self {
            zeroize::Zeroize::zeroize(&mut r.plaintext);
        }
    }
}

pub(super) struct Cached {
    /// Who asked: only the same principal gets the answer again.
    pub(super) principal: String,
    pub(super) request_hash: [u8; 32],
    pub(super) answer: CachedAnswer,
    /// What the entry holds, roughly, for the cache's byte bound.
    pub(super) bytes: usize,
}

impl Cached {
    pub(super) fn new(principal: &str, request_hash: [u8; 32], answer: CachedAnswer) -> Self {
        use prost::Message as _;
        let body = match &answer {
            CachedAnswer::Sign(r) => r.encoded_len(),
            CachedAnswer::Wrap(r) => r.encoded_len(),
            CachedAnswer::DataKey(r) => r.encoded_len(),
        };
        // the struct, its Arc and the cache's own entry
        let overhead = std::mem::size_of::<Self>() + 96;
        Cached {
            bytes: body + principal.len() + overhead,
            principal: principal.to_string(),
            request_hash,
            answer,
        }
    }
}

/// SHA-256 over length-prefixed parts: the identity of a request's input.
pub(super) fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
        buf.extend_from_slice(p);
    }
    sha256(&buf)
}

pub(super) fn validate_op_id(op_id: &str) -> Result<()> {
    if op_id.len() > MAX_OP_ID_LEN || !op_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "op_id must be at most {MAX_OP_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

impl KmsService {
    /// For a mutation carrying an `op_id`: the op record to write, or the
    /// earlier result when this is a retry.
    pub(super) fn prior_op(&self, op: &Option<OpRecord>) -> Result<Option<String>> {
        let Some(op) = op else { return Ok(None) };
        match self.store.find_op(&op.tenant, &op.op_id)? {
            None => Ok(None),
            Some(prev) if prev.request_hash == op.request_hash => Ok(Some(prev.result)),
            Some(_) => Err(Error::AlreadyExists(format!(
                "op_id {:?} was already used with different input",
                op.op_id
            ))),
        }
    }

    pub(super) fn op_record(
        caller: &Caller,
        op_id: &str,
        parts: &[&[u8]],
    ) -> Result<Option<OpRecord>> {
        if op_id.is_empty() {
            return Ok(None);
        }
        validate_op_id(op_id)?;
        Ok(Some(OpRecord {
            tenant: caller.tenant.clone(),
            op_id: op_id.to_string(),
            request_hash: request_hash(parts),
            result: String::new(),
        }))
    }

    /// In-memory idempotency for crypto operations: `Some(answer)` on a
    /// retry, `AlreadyExists` on reuse with other input.
    pub(super) fn cached(
        &self,
        caller: &Caller,
        op_id: &str,
        hash: &[u8; 32],
    ) -> Result<Option<Arc<Cached>>> {
        if op_id.is_empty() {
            return Ok(None);
        }
        validate_op_id(op_id)?;
        match self.op_cache.get(&caller.tenant, op_id) {
            None => {
                self.op_cache.room(&caller.tenant).map_err(|f| {
                    Error::ResourceExhausted(format!(
                        "op_id answers are held for {} tenants at most ({} bytes in all) and none has room; retry later or without op_id",
                        f.tenants, f.total_bytes
                    ))
                })?;
                Ok(None)
            }
            // another principal's op_id: never its answer
            Some(c) if c.principal != caller.principal => Err(Error::AlreadyExists(format!(
                "op_id {op_id:?} was already used by another caller of this tenant"
            ))),
            Some(c) if &c.request_hash == hash => Ok(Some(c)),
            Some(_) => Err(Error::AlreadyExists(format!(
                "op_id {op_id:?} was already used with different input"
            ))),
        }
    }

    pub(super) fn remember(
        &self,
        caller: &Caller,
        op_id: &str,
        request_hash: [u8; 32],
        answer: CachedAnswer,
    ) {
        if op_id.is_empty() {
            return;
        }
        let entry = Arc::new(Cached::new(&caller.principal, request_hash, answer));
        if self.op_cache.insert(&caller.tenant, op_id, entry).is_err() {
            // room was checked before the operation; another tenant took
            // the last cache since. The answer stands, unremembered.
            metrics::counter!("kms_op_cache_full_total").increment(1);
        }
    }
}
