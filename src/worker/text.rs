//! Numbers and addresses written into a byte buffer without the formatting machinery: they
//! are written for every request (the access line, the app's view of the peer), where `fmt`
//! cost about 5% of the worker's instructions per request (callgrind).

use std::net::SocketAddr;

/// Writes `ip:port` (`[ip]:port` for IPv6).
pub fn push_address(text: &mut Vec<u8>, address: &SocketAddr) {
    if address.is_ipv6() {
        use std::io::Write;
        let _ = write!(text, "{address}");
        return;
    }
    push_ip(text, address);
    text.push(b':');
    push_decimal(text, address.port().into(), 1);
}

/// Writes the IP address of `address` (IPv4 without `fmt`).
pub fn push_ip(text: &mut Vec<u8>, address: &SocketAddr) {
    match address {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                push_decimal(text, octet.into(), 1);
            }
        }
        SocketAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(text, "{}", v6.ip());
        }
    }
}

/// Writes `value` in decimal, with leading zeros to at least `width` digits (at most 20).
pub fn push_decimal(text: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    at = at.min(digits.len().saturating_sub(width));
    text.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for address in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:443",
        ] {
            let parsed: SocketAddr = address.parse().expect("an address");
            let mut text = Vec::new();
            push_address(&mut text, &parsed);
            assert_eq!(String::from_utf8(text).expect("ASCII"), parsed.to_string());
        }
    }

    #[test]
    fn decimals_have_the_width_asked_for() {
        for (value, width, written) in [
            (0, 1, "0"),
            (7, 2, "07"),
            (1234, 2, "1234"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut text = Vec::new();
            push_decimal(&mut text, value, width);
            assert_eq!(String::from_utf8(text).expect("ASCII"), written);
        }
    }
}
