"""sqlited maps the heavy optional libraries only when a feature needs them.

The MongoDB directory (libmongoc, ICU, SASL...) and the S3 backup target
(libcurl, GnuTLS, Kerberos, libxml2...) are modules, sealmail-dir-mongo.so
and sealmail-bk-s3.so (frontends/common/sm_module.h). Checked here on a
running sqlited through /proc/PID/maps:

- with the default configuration (embedded directory, local backups), idle
  and after a scheduled backup ran, none of those libraries is mapped;
- a scheduled backup to an s3:// target loads the S3 module (and libcurl)
  and stores a snapshot in the bucket (s3rver, as test_backup_s3.py), and
  sqlited exits cleanly (under ASan: nothing leaked);
- a sqlited whose S3 module is missing (a copy of the binary alone in a
  directory) logs which module it lacks and where it looked, the scheduled
  backup fails cleanly and sqlited keeps serving.

The MongoDB module's loading is covered by test_dir (mongodb:// URIs go
through it) and test_dir_mongo (against a server, when one is given).
"""
import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import sqlited_ops as ops  # noqa: E402
import test_admin  # noqa: E402
import test_backup  # noqa: E402
import test_backup_s3  # noqa: E402

# Libraries that only the modules may bring in (file name prefixes).
HEAVY = ("libcurl", "libxml2", "libmongoc", "libbson", "libicu", "libgnutls",
         "libkrb5", "libgssapi", "libldap", "libssh2", "librtmp", "libsasl2",
         "libp11-kit", "libnghttp2", "libsnappy", "libmongocrypt")
PASSWORD = test_backup.PASSWORD


def mapped_libraries(pid):
    """The file names of the shared objects mapped by pid."""
    names = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and ".so" in fields[5]:
                names.add(os.path.basename(fields[5]))
    return names


def heavy_in(names):
    return sorted(n for n in names if n.startswith(HEAVY))


def restart_with_backups_every_second(case, timeout):
    """Restarts case's sqlited with a scheduled backup every second (the
    test hook) and waits until its log says a snapshot was made."""
    case.assertEqual(case.stop_sqlited(), 0)
    os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"] = "1"
    try:
        case.start_sqlited()
    finally:
        del os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"]
    case.assertTrue(test_admin.wait_for(
        lambda: "scheduled backup: snapshot" in case.read_log(), timeout=timeout),
        case.read_log())


class Libraries(test_admin.Admin):
    run_cli = test_backup.Backup.run_cli
    add_aliases = test_backup.Backup.add_aliases

    def test_default_sqlited_maps_no_optional_library(self):
        libs = mapped_libraries(self.sqlited.pid)
        # The check reads real maps: sqlited's own libraries are there.
        self.assertTrue(any(n.startswith("libsqlcipher") for n in libs), libs)
        self.assertTrue(any(n.startswith("libsodium") for n in libs), libs)
        self.assertEqual(heavy_in(libs), [])
        self.assertFalse(any(n.startswith("sealmail-") for n in libs), libs)

    def test_local_scheduled_backup_loads_nothing(self):
        self.add_aliases(["alice@example.org"])
        restart_with_backups_every_second(self, timeout=60)
        self.assertEqual(heavy_in(mapped_libraries(self.sqlited.pid)), [])
        self.assertEqual(self.stop_sqlited(), 0, self.read_log()[-3000:])

    def test_missing_s3_module_is_a_clear_error(self):
        alone = os.path.join(self.tmp, "alone")
        os.mkdir(alone)
        exe = os.path.join(alone, "sqlited")
        shutil.copy2(test_admin.SQLITED, exe)
        with open(self.conf, "a") as f:
            f.write("s3_endpoint = http://127.0.0.1:9\ns3_region = us-east-1\n"
                    "backup_target = s3://bucket/host1\n")
        self.assertEqual(self.stop_sqlited(), 0)
        os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"] = "1"
        try:
            self.log = os.path.join(self.tmp, "sqlited-alone.log")
            self.sqlited = self.spawn([exe, "--config", self.conf], self.log)
            self.assertTrue(test_admin.wait_for(
                lambda: os.path.exists(self.socket) or self.sqlited.poll() is not None))
        finally:
            del os.environ["SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS"]
        self.assertTrue(test_admin.wait_for(
            lambda: "scheduled backup failed" in self.read_log(), timeout=60),
            self.read_log())
        log = self.read_log()
        self.assertIn("needs the module sealmail-bk-s3.so", log)
        self.assertIn(alone, log)            # where it looked
        self.assertIsNone(self.sqlited.poll())
        # Still serving: an admin command works.
        r = subprocess.run([test_admin.SEALMAIL, "domain", "list", "--config", self.conf],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(heavy_in(mapped_libraries(self.sqlited.pid)), [])


class S3Module(test_backup_s3.BackupS3):
    def test_s3_scheduled_backup_loads_the_module(self):
        self.add_aliases(["alice@example.org"])
        with self.connect() as c:
            s = ops.unlock(c, "alice@example.org", PASSWORD.encode())
            ops.append(c, s, "INBOX", b"Subject: sched\r\n\r\nbody\r\n")
        self.assertEqual(heavy_in(mapped_libraries(self.sqlited.pid)), [])
        restart_with_backups_every_second(self, timeout=120)
        libs = mapped_libraries(self.sqlited.pid)
        self.assertIn("sealmail-bk-s3.so", libs)
        self.assertTrue(any(n.startswith("libcurl") for n in libs), libs)
        self.assertFalse(any(n.startswith("libmongoc") for n in libs), libs)
        objects = self.bucket_objects()
        self.assertTrue(any(o.startswith("host1/snapshots/") for o in objects), objects)
        # A clean exit (under ASan: no leak left by the module's libraries).
        self.assertEqual(self.stop_sqlited(), 0, self.read_log()[-3000:])
        self.assertNotIn("Sanitizer", self.read_log())


# Only this file's tests, not the inherited ones.
def _only_own_tests(cls):
    for name in dir(cls.__mro__[1]):
        if name.startswith("test_") and name not in cls.__dict__:
            setattr(cls, name, None)


_only_own_tests(Libraries)
_only_own_tests(S3Module)

if __name__ == "__main__":
    unittest.main()
