"""Writes a large core-system batch export in the sample format
(crates/adapters/samples/core_export_sjis.{dat,toml}: fixed-width Shift_JIS, 98 bytes a record)
for measuring an issuer's historical load — the sample's data records repeated with new member
numbers and transaction ids, spread over the months before `--until`.

    python3 tools/core_export.py --records 1000000 --members 50000 --out /tmp/past.dat
"""

import argparse
import datetime
import pathlib

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "crates/adapters/samples/core_export_sjis.dat"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--members", type=int, default=50_000)
    p.add_argument("--months", type=int, default=24)
    p.add_argument("--until", default=datetime.date.today().isoformat())
    p.add_argument("--out", required=True)
    args = p.parse_args()
    records = SAMPLE.read_bytes().split(b"\r\n")
    header = records[0]
    # The sample's data records, less the one it holds to show a rejected line (its amount).
    data = [r for r in records if r[:1] == b"2" and r[32:42].strip().isdigit()]
    until = datetime.date.fromisoformat(args.until)
    days = args.months * 30
    with open(args.out, "wb") as out:
        out.write(header + b"\r\n")
        for n in range(args.records):
            r = bytearray(data[n % len(data)])
            member = b"M%09d" % (n % args.members)
            used = until - datetime.timedelta(days=days * (args.records - n) // args.records)
            posted = used + datetime.timedelta(days=2)
            billing = used.replace(day=1) + datetime.timedelta(days=45)
            r[1:11] = member
            r[16:24] = used.strftime("%Y%m%d").encode()
            r[24:32] = posted.strftime("%Y%m%d").encode()
            # No long run of digits: the PAN guard would (rightly) take some for card numbers.
            r[76:92] = b"H%07dK%07d" % (n // 10_000_000, n % 10_000_000)
            r[92:98] = billing.strftime("%Y%m").encode()
            out.write(bytes(r) + b"\r\n")
        out.write(b"9" + b" " * 97 + b"\r\n")


if __name__ == "__main__":
    main()
