//! The URI subject alternative names of a certificate (RFC 5280 §4.2.1.6), where a SPIFFE
//! ID lives (an X509-SVID carries exactly one). `webpki` checks DNS and IP names but does
//! not expose URIs, and the walk to them is short: a DER reader of a few tags, over a
//! certificate the chain check has already parsed whole.

/// The subjectAltName extension's object identifier, 2.5.29.17, as DER content.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT`: the extensions of a v3 TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[6] IMPLICIT IA5String`: a GeneralName that is a URI.
const URI: u8 = 0x86;

/// The certificate is not the DER it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadEncoding;

/// One tag-length-value: the tag, the content and what follows it.
fn next(input: &[u8]) -> Result<(u8, &[u8], &[u8]), BadEncoding> {
    let (&tag, rest) = input.split_first().ok_or(BadEncoding)?;
    if tag & 0x1f == 0x1f {
        // A tag number above 30: no structure read here has one.
        return Err(BadEncoding);
    }
    let (&first, mut rest) = rest.split_first().ok_or(BadEncoding)?;
    let len = match first {
        short if short < 0x80 => usize::from(short),
        long => {
            // Long form: 1 to 4 length octets, the first not 0, the length not one the
            // short form could say (DER's minimal encoding); 0x80, BER's indefinite
            // length, is not DER.
            let octets = usize::from(long & 0x7f);
            if octets == 0 || octets > 4 || rest.len() < octets || rest[0] == 0 {
                return Err(BadEncoding);
            }
            let (len, tail) = rest.split_at(octets);
            rest = tail;
            let len = len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            if len < 0x80 {
                return Err(BadEncoding);
            }
            len
        }
    };
    if rest.len() < len {
        return Err(BadEncoding);
    }
    let (content, rest) = rest.split_at(len);
    Ok((tag, content, rest))
}

/// The content of a value that must have tag `tag`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), BadEncoding> {
    match next(input)? {
        (found, content, rest) if found == tag => Ok((content, rest)),
        _ => Err(BadEncoding),
    }
}

/// The URIs among the subject alternative names of the DER certificate `der`, in order.
/// A certificate without the extension has none.
pub(crate) fn uris(der: &[u8]) -> Result<Vec<&str>, BadEncoding> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    let mut extensions = None;
    while !tbs.is_empty() {
        let (tag, content, rest) = next(tbs)?;
        if tag == EXTENSIONS {
            extensions = Some(content);
        }
        tbs = rest;
    }
    let Some(extensions) = extensions else {
        return Ok(Vec::new());
    };
    let (mut list, _) = expect(extensions, SEQUENCE)?;
    while !list.is_empty() {
        let (extension, rest) = expect(list, SEQUENCE)?;
        list = rest;
        let (oid, mut fields) = expect(extension, OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if let Ok((BOOLEAN, _, rest)) = next(fields) {
            fields = rest;
        }
        let (value, rest) = expect(fields, OCTET_STRING)?;
        let (mut names, trailing) = expect(value, SEQUENCE)?;
        if !rest.is_empty() || !trailing.is_empty() {
            return Err(BadEncoding);
        }
        let mut found = Vec::new();
        while !names.is_empty() {
            let (tag, content, rest) = next(names)?;
            names = rest;
            if tag == URI {
                // IA5String: ASCII.
                if !content.is_ascii() {
                    return Err(BadEncoding);
                }
                found.push(std::str::from_utf8(content).map_err(|_| BadEncoding)?);
            }
        }
        return Ok(found);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_are_an_answer_or_an_error_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = uris(&bytes);
        }
    }

    fn certificate(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("a key");
        params
            .self_signed(&key)
            .expect("a certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn finds_the_uris_among_other_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["orders.internal".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/prod/sa/orders"
                .try_into()
                .expect("an IA5 string"),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 1].into()));
        let der = certificate(params);
        assert_eq!(
            uris(&der).expect("parses"),
            ["spiffe://example.org/ns/prod/sa/orders"]
        );
    }

    #[test]
    fn a_certificate_without_uris_has_none() {
        let params = rcgen::CertificateParams::new(vec!["orders".to_owned()]).expect("params");
        assert!(uris(&certificate(params)).expect("parses").is_empty());
    }

    #[test]
    fn truncated_or_garbled_input_is_an_error_never_a_panic() {
        let mut params = rcgen::CertificateParams::new(vec!["a".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://td/x".try_into().expect("an IA5 string"),
        ));
        let der = certificate(params);
        for len in 0..der.len() {
            let _ = uris(&der[..len]);
        }
        for at in 0..der.len() {
            let mut garbled = der.clone();
            garbled[at] ^= 0xff;
            let _ = uris(&garbled);
        }
        assert_eq!(uris(&[]), Err(BadEncoding));
        // A length in long form that the short form could say, and BER's indefinite length.
        assert_eq!(uris(&[0x30, 0x81, 0x02, 0x30, 0x00]), Err(BadEncoding));
        assert_eq!(
            uris(&[0x30, 0x80, 0x30, 0x00, 0x00, 0x00]),
            Err(BadEncoding)
        );
        assert_eq!(
            uris(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(BadEncoding)
        );
    }
}
