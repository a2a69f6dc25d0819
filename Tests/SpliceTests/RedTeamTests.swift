import Foundation
import Splice
import XCTest

/// A hostile local user (`nobody`, through setpriv) against the files and the socket of a
/// user (root here, as in CI) who runs Splice: one test per attack in docs/security.md.
/// Each test also shows that its attack was really carried out (the reader read the public
/// key, the fake server was connected to, the refusal came from the daemon), so a test that
/// stops attacking fails instead of passing.
final class RedTeamTests: XCTestCase {
    static let nobody: uid_t = 65534
    var base = ""

    override func setUpWithError() throws {
        guard getuid() == 0 else {
            print("RedTeamTests skipped: they need root, to act as nobody through setpriv")
            throw XCTSkip("needs root to act as another user (nobody) through setpriv")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            print("RedTeamTests skipped: no /usr/bin/setpriv")
            throw XCTSkip("needs /usr/bin/setpriv (util-linux)")
        }
        base = NSTemporaryDirectory() + "splice-redteam-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        chmod(base, 0o755) // nobody may look in, not write
    }

    override func tearDown() {
        for socket in sockets { _ = try? runSplice(["machine", "stop", "--socket", socket]) }
        for p in processes where p.isRunning { p.terminate(); p.waitUntilExit() }
        if !base.isEmpty { try? FileManager.default.removeItem(atPath: base) }
    }

    var sockets: [String] = []
    var processes: [Process] = []

    // MARK: Helpers

    /// Starts `arguments` as nobody; its standard output is collected.
    func startAsNobody(_ arguments: [String]) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=\(Self.nobody)", "--regid=\(Self.nobody)", "--clear-groups"] + arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        processes.append(p)
        return (p, out)
    }

    @discardableResult
    func runAsNobody(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let (p, out) = try startAsNobody(arguments)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// A directory owned by nobody (made by root, then given away: what nobody could make).
    func nobodysDirectory(_ name: String, mode: mode_t = 0o755) throws -> String {
        let d = base + "/" + name
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false)
        chown(d, Self.nobody, Self.nobody)
        chmod(d, mode)
        return d
    }

    /// A file of root's that an attack aims at: its bytes and mode must not change.
    func victim(_ name: String, _ text: String = "root's precious file\n", mode: mode_t = 0o644) throws -> String {
        let path = base + "/" + name
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(text.utf8)))
        chmod(path, mode)
        return path
    }

    func state(_ path: String) -> (bytes: Data?, mode: mode_t, uid: uid_t) {
        var st = stat()
        _ = lstat(path, &st)
        return (FileManager.default.contents(atPath: path), st.st_mode & 0o7777, st.st_uid)
    }

    func assertUnchanged(_ path: String, _ before: (bytes: Data?, mode: mode_t, uid: uid_t), _ what: String,
                         file: StaticString = #filePath, line: UInt = #line) {
        let now = state(path)
        XCTAssertEqual(now.bytes, before.bytes, "\(what): \(path) bytes changed", file: file, line: line)
        XCTAssertEqual(now.mode, before.mode, "\(what): \(path) mode changed", file: file, line: line)
        XCTAssertEqual(now.uid, before.uid, "\(what): \(path) owner changed", file: file, line: line)
    }

    func isSymlink(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK
    }

    func payload(_ isa: String = "x86_64") throws -> String {
        let out = base + "/p02-\(isa).lp"
        let p = "patches/02-scaled-plus-two"
        let r = try runSplice(["build", "--original", samplePath("\(p)/orig-\(isa).o"), "--patched", samplePath("\(p)/patched-\(isa).o"),
                               "--target", samplePath("kernel-\(isa).elf"), "-o", out])
        XCTAssertEqual(r.status, 0, r.err)
        chmod(out, 0o644)
        return out
    }

    /// A machine of root's in `directory` (0755, so nobody can reach the socket once its
    /// mode is opened up on purpose). Returns the socket path.
    func startMachine(in directory: String) throws -> String {
        let socket = directory + "/machine.sock"
        let r = try runSplice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64), "--socket", socket])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        sockets.append(socket)
        return socket
    }

    func daemonPID(_ socket: String) throws -> Int32 {
        let log = try String(contentsOfFile: SafeFile.split(socket).directory + "/machine.log", encoding: .utf8)
        let line = try XCTUnwrap(log.split(separator: "\n").last { $0.contains("splice machine: serving") && $0.contains(socket) })
        return try XCTUnwrap(Int32(line.split(separator: " ").last!))
    }

    /// A field of /proc/PID/status (VmRSS in kB, Threads).
    func procStatus(_ pid: Int32, _ field: String) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix(field + ":") })
        return try XCTUnwrap(Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]))
    }

    func reply(_ line: [UInt8]) throws -> ControlReply { try JSONDecoder().decode(ControlReply.self, from: Data(line)) }

    /// A Perl helper (perl-base is in every Debian system): its source in `base`, readable by nobody.
    func perlScript(_ name: String, _ source: String) throws -> String {
        let path = base + "/" + name + ".pl"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(source.utf8)))
        chmod(path, 0o644)
        return path
    }

    // MARK: 1. keygen

    /// A reader polling the directory and opening every new file while 40 key pairs are
    /// made there never gets a private key; it does read the public keys.
    func testKeygenNeverLetsAnotherUserReadThePrivateKey() throws {
        let keys = base + "/keys"
        try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: false)
        chmod(keys, 0o755)
        let reader = try perlScript("reader", """
            my ($d) = @ARGV; my %pub; $| = 1;
            until (-e "$d/stop") {
                opendir(my $h, $d) or next;
                for my $f (readdir $h) {
                    next if $f eq '.' || $f eq '..';
                    open(my $fh, '<', "$d/$f") or next;
                    local $/; my $c = <$fh>; next unless defined $c;
                    print "LEAK $f\\n" if $c =~ /PRIVATE KEY/;
                    print "PUBLIC $f\\n" if $c =~ /PUBLIC KEY/ && !$pub{$f}++;
                }
                closedir $h;
            }
            """)
        let (p, out) = try startAsNobody(["/usr/bin/perl", reader, keys])
        Thread.sleep(forTimeInterval: 0.2)
        for i in 0..<40 {
            let r = try runSplice(["keygen", keys + "/k\(i)"])
            XCTAssertEqual(r.status, 0, r.err)
        }
        FileManager.default.createFile(atPath: keys + "/stop", contents: nil)
        let seen = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let leaks = seen.split(separator: "\n").filter { $0.hasPrefix("LEAK") }
        let publics = seen.split(separator: "\n").filter { $0.hasPrefix("PUBLIC") }
        print("keygen race: the reader read \(publics.count) of 40 public keys and \(leaks.count) private keys")
        XCTAssertEqual(leaks, [], "nobody read a private key")
        XCTAssertGreaterThan(publics.count, 0, "the reader never read anything: the attack did not run")
        for i in 0..<40 {
            XCTAssertEqual(state(keys + "/k\(i).pem").mode, 0o600)
        }
    }

    /// keygen refuses to overwrite a key, and a symlink planted at the private key's name
    /// (by another user, in a shared sticky directory) is not followed; nothing is written.
    func testKeygenRefusesAnExistingKeyAndAPlantedSymlink() throws {
        let first = try runSplice(["keygen", base + "/mine"])
        XCTAssertEqual(first.status, 0, first.err)
        let key = state(base + "/mine.pem"), pub = state(base + "/mine.pub.pem")
        let again = try runSplice(["keygen", base + "/mine"])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.err.contains("already exists; refusing to overwrite it"), again.err)
        assertUnchanged(base + "/mine.pem", key, "a second keygen")
        assertUnchanged(base + "/mine.pub.pem", pub, "a second keygen")

        let shared = base + "/shared"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        chmod(shared, 0o1777)
        let target = try victim("victim-key")
        let before = state(target)
        XCTAssertEqual(try runAsNobody(["/bin/ln", "-s", target, shared + "/k.pem"]).status, 0)
        let r = try runSplice(["keygen", shared + "/k"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("k.pem: already exists"), r.err)
        assertUnchanged(target, before, "keygen through a symlink")
        XCTAssertFalse(FileManager.default.fileExists(atPath: shared + "/k.pub.pem"), "half a key pair was left")
    }

    // MARK: 2. machine start: the socket directory and the log

    /// nobody made the directory a machine would use and put a symlink to root's file at
    /// machine.log: the start is refused before anything is created or opened there.
    func testStartRefusesADirectoryAnotherUserMadeWithALogSymlink() throws {
        let attack = try nobodysDirectory("attack", mode: 0o777)
        let target = try victim("victim-log", mode: 0o644)
        let before = state(target)
        symlink(target, attack + "/machine.log")
        lchown(attack + "/machine.log", Self.nobody, Self.nobody)
        let r = try runSplice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64), "--socket", attack + "/machine.sock"])
        XCTAssertEqual(r.status, 6, r.out + r.err)
        XCTAssertTrue(r.err.contains("owned by uid 65534"), r.err)
        assertUnchanged(target, before, "machine start in nobody's directory")
        XCTAssertFalse(FileManager.default.fileExists(atPath: attack + "/machine.sock"))
    }

    /// A symlinked directory (to a directory of root's): refused; nothing in the target
    /// directory changes.
    func testStartRefusesASymlinkedDirectory() throws {
        let rootDir = base + "/roots"
        try FileManager.default.createDirectory(atPath: rootDir, withIntermediateDirectories: false)
        chmod(rootDir, 0o700)
        let log = try victim("roots/machine.log", "root's log\n", mode: 0o644)
        let sock = try victim("roots/machine.sock", "not a socket\n", mode: 0o644)
        let (logBefore, sockBefore) = (state(log), state(sock))
        let shared = try nobodysDirectory("shared", mode: 0o777)
        XCTAssertEqual(try runAsNobody(["/bin/ln", "-s", rootDir, shared + "/splice"]).status, 0)
        let r = try runSplice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64), "--socket", shared + "/splice/machine.sock"])
        XCTAssertEqual(r.status, 6, r.out + r.err)
        XCTAssertTrue(r.err.contains("is a symbolic link"), r.err)
        assertUnchanged(log, logBefore, "a symlinked socket directory")
        assertUnchanged(sock, sockBefore, "a symlinked socket directory")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: rootDir).sorted(), ["machine.log", "machine.sock"])
    }

    /// In root's own directory, a symlink or a hard link at machine.log is not written
    /// through; and the log is appended to, never truncated, mode 0600.
    func testTheLogIsNeverWrittenThroughALink() throws {
        let dir = base + "/mine"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        chmod(dir, 0o700)
        let target = try victim("victim", mode: 0o644)
        let before = state(target)
        let args = ["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64), "--socket", dir + "/machine.sock"]
        symlink(target, dir + "/machine.log")
        var r = try runSplice(args)
        XCTAssertEqual(r.status, 1, r.out + r.err)
        XCTAssertTrue(r.err.contains("is a symbolic link; refusing to write through it"), r.err)
        unlink(dir + "/machine.log")
        link(target, dir + "/machine.log")
        r = try runSplice(args)
        XCTAssertEqual(r.status, 1, r.out + r.err)
        XCTAssertTrue(r.err.contains("2 links; not written"), r.err)
        assertUnchanged(target, before, "the log through a link")
        unlink(dir + "/machine.log")

        // --log in a shared sticky directory: a file nobody made there first is not used.
        let shared = base + "/shared"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        chmod(shared, 0o1777)
        XCTAssertEqual(try runAsNobody(["/usr/bin/touch", shared + "/splice.log"]).status, 0)
        r = try runSplice(args + ["--log", shared + "/splice.log"])
        XCTAssertEqual(r.status, 1, r.out + r.err)
        XCTAssertTrue(r.err.contains("must be a regular file of yours with one link; it is type 100000, uid 65534"), r.err)
        XCTAssertEqual(state(shared + "/splice.log").bytes?.count, 0, "nobody's log was written")

        FileManager.default.createFile(atPath: dir + "/machine.log", contents: Data("an earlier run\n".utf8))
        chmod(dir + "/machine.log", 0o644)
        _ = try startMachine(in: dir)
        let log = try String(contentsOfFile: dir + "/machine.log", encoding: .utf8)
        XCTAssertTrue(log.hasPrefix("an earlier run\n"), "the log was truncated: \(log)")
        XCTAssertTrue(log.contains("splice machine: serving"), log)
        XCTAssertEqual(state(dir + "/machine.log").mode, 0o600)
    }

    // MARK: 3. the client authenticates the machine

    /// A fake machine served by nobody: in nobody's directory (the default path pre-made by
    /// the attacker), and behind root's own directory (the socket moved there). The client
    /// refuses both with exit 6 and sends nothing; in the second case it did connect.
    func testTheClientSendsNothingToAMachineItCannotProveIsTheUsers() throws {
        let server = try perlScript("fake-machine", """
            use IO::Socket::UNIX; use IO::Select;
            my ($path, $log) = @ARGV; unlink $path; $SIG{PIPE} = 'IGNORE';
            my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $path, Listen => 16) or die "listen: $!";
            chmod 0777, $path;
            open(my $L, '>>', $log) or die "log: $!"; select((select($L), $| = 1)[0]);
            print $L "ready\\n";
            while (my $c = $s->accept) {
                my ($n, $buf) = (0, '');
                while (IO::Select->new($c)->can_read(0.5)) { my $r = sysread($c, $buf, 65536); last unless $r; $n += $r; }
                print $L "connection $n\\n";
                print $c "{\\"ok\\":true,\\"payload\\":{\\"id\\":\\"p02\\",\\"state\\":\\"APPLIED\\",\\"rc\\":0,\\"buildID\\":\\"\\"}}\\n";
                close $c;
            }
            """)
        let p02 = try payload()
        let attack = try nobodysDirectory("splice-0", mode: 0o755)
        let log = attack + "/fake.log"
        _ = try startAsNobody(["/usr/bin/perl", server, attack + "/machine.sock", log])
        let deadline = Date(timeIntervalSinceNow: 10)
        while !((try? String(contentsOfFile: log, encoding: .utf8))?.contains("ready") ?? false) && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
        // In nobody's directory.
        for args in [["load", "p02", p02, "--exit-status", "splice"], ["upload", "p02", p02], ["list"]] {
            let r = try runSplice(args + ["--socket", attack + "/machine.sock"])
            XCTAssertEqual(r.status, 6, "\(args): \(r.out)\(r.err)")
            XCTAssertTrue(r.err.contains("owned by uid 65534") && r.err.contains("nothing was sent"), r.err)
            XCTAssertFalse(r.out.contains("APPLIED"), r.out)
        }
        XCTAssertEqual(try String(contentsOfFile: log, encoding: .utf8), "ready\n", "the client connected to nobody's socket")

        // The same socket moved behind a directory of root's: the directory passes, the
        // server's credentials do not.
        let mine = base + "/mine"
        try FileManager.default.createDirectory(atPath: mine, withIntermediateDirectories: false)
        chmod(mine, 0o700)
        XCTAssertEqual(rename(attack + "/machine.sock", mine + "/machine.sock"), 0)
        for args in [["load", "p02", p02, "--exit-status", "splice"], ["upload", "p02", p02]] {
            let r = try runSplice(args + ["--socket", mine + "/machine.sock"])
            XCTAssertEqual(r.status, 6, "\(args): \(r.out)\(r.err)")
            XCTAssertTrue(r.err.contains("is served by uid 65534") && r.err.contains("nothing was sent"), r.err)
        }
        Thread.sleep(forTimeInterval: 1.2) // the fake server logs each connection after 0.5 s of silence
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("connection") }.count, 2, "the client did not connect: \(lines)")
        XCTAssertEqual(lines.filter { $0.hasPrefix("connection") && $0 != "connection 0" }, [], "bytes reached the fake machine")
    }

    // MARK: 4. requests that must not kill the daemon

    /// Every numeric field out of range, and strings that are not ids or function names,
    /// are refused with EINVAL; the machine answers afterwards with every vCPU running.
    func testOutOfRangeRequestsAreRefusedAndTheDaemonLives() throws {
        let dir = base + "/mine"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        chmod(dir, 0o700)
        let socket = try startMachine(in: dir)
        let requests = [
            #"{"op":"status","records":-1}"#, #"{"op":"status","records":65}"#, #"{"op":"status","records":9223372036854775807}"#,
            #"{"op":"status","records":-9223372036854775808}"#, #"{"op":"list","start":-1}"#, #"{"op":"list","count":-1}"#,
            #"{"op":"list","count":257}"#, #"{"op":"list","start":-9223372036854775808,"count":9223372036854775807}"#,
            #"{"op":"call","function":"scaled","arguments":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33]}"#,
            #"{"op":"call","function":"sc\u0000aled"}"#, #"{"op":"call","function":""}"#,
            #"{"op":"get","id":"x\ny"}"#, #"{"op":"get","id":""}"#, #"{"op":"action","id":"../../etc","action":"apply"}"#,
            #"{"op":"get","id":"p","payload":"AAAA"}"#,
        ]
        for request in requests {
            let r = try reply(try ControlSocket.exchange(path: socket, Array(request.utf8)))
            XCTAssertFalse(r.ok, request)
            XCTAssertEqual(r.kind, .refused, "\(request): \(r.error ?? "")")
            XCTAssertEqual(r.errno, -22, "\(request): \(r.error ?? "")")
        }
        let cli = try runSplice(["machine", "status", "--records=-1", "--socket", socket])
        XCTAssertEqual(cli.status, 1, cli.err)
        XCTAssertTrue(cli.err.contains("--records"), cli.err)
        let status = try JSONDecoder().decode(LiveMachine.Status.self, from: Data(try runSplice(["machine", "status", "--json", "--socket", socket]).out.utf8))
        XCTAssertTrue(status.vcpus.allSatisfy { $0.state == .running && $0.iterations > 0 }, "\(status.vcpus)")
    }

    // MARK: 5. output files

    /// nobody planted symlinks, in a shared sticky directory, at the names root's commands
    /// write to: each command replaces the link with its file; the targets stay as they were.
    func testOutputFilesReplaceAPlantedSymlinkWithoutFollowingIt() throws {
        let shared = base + "/tmp"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        chmod(shared, 0o1777)
        let target = try victim("victim-output")
        let before = state(target)
        func plant(_ name: String) throws -> String {
            let path = shared + "/" + name
            XCTAssertEqual(try runAsNobody(["/bin/ln", "-s", target, path]).status, 0)
            XCTAssertTrue(isSymlink(path))
            return path
        }
        let p = "patches/02-scaled-plus-two"
        let built = try plant("p02.lp")
        var r = try runSplice(["build", "--original", samplePath("\(p)/orig-x86_64.o"), "--patched", samplePath("\(p)/patched-x86_64.o"),
                               "--target", samplePath("kernel-x86_64.elf"), "-o", built])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertNoThrow(try Payload(contentsOf: built))

        XCTAssertEqual(try runSplice(["keygen", base + "/key"]).status, 0)
        let signed = try plant("p02.signed")
        r = try runSplice(["sign", built, "--key", base + "/key.pem", "-o", signed])
        XCTAssertEqual(r.status, 0, r.err)

        let junit = try plant("junit.xml"), json = try plant("results.json")
        r = try runSplice(["matrix", "--scenario", "demo", "--junit", junit, "--json-out", json])
        XCTAssertEqual(r.status, 0, r.out + r.err)

        let traceDir = shared + "/trace"
        try FileManager.default.createDirectory(atPath: traceDir, withIntermediateDirectories: false)
        let report = traceDir + "/demo-x86_64-stop.md"
        symlink(target, report)
        r = try runSplice(["trace", "demo", "--isa", "x86_64", "-o", traceDir])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        let linkedDir = try plant("trace-link")
        r = try runSplice(["trace", "demo", "--isa", "x86_64", "-o", linkedDir])
        XCTAssertEqual(r.status, 1, r.out + r.err)
        XCTAssertTrue(r.err.contains("is a symbolic link"), r.err)

        for path in [built, signed, junit, json, report] {
            XCTAssertFalse(isSymlink(path), "\(path) is still the planted link")
            XCTAssertGreaterThan(state(path).bytes?.count ?? 0, 0, path)
        }
        assertUnchanged(target, before, "commands writing where symlinks were planted")
    }

    // MARK: 6. the socket opened up on purpose

    /// With the socket made 0666 on purpose, nobody's connections are refused before a byte
    /// of them is read: huge requests do not grow the daemon, slow ones hold no thread, and
    /// an id with a newline writes no line of its own into the log. The owner's slow
    /// requests are cut off at the request deadline, and at most 32 are served at a time.
    func testAnOpenedUpSocketStillResistsFloodsAndForgery() throws {
        let dir = base + "/open"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        chmod(dir, 0o755)
        let socket = try startMachine(in: dir)
        chmod(socket, 0o666)
        let pid = try daemonPID(socket)
        let client = try perlScript("client", """
            use IO::Socket::UNIX; use IO::Select;
            my ($path, $mode, $n, $arg) = @ARGV; $| = 1; $SIG{PIPE} = 'IGNORE';
            my @c;
            for my $i (1 .. $n) {
                my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) or die "connect: $!";
                push @c, $s;
            }
            if ($mode eq 'big') {
                my $chunk = '{' x (1 << 20);
                for my $s (@c) { for (1 .. $arg) { last unless defined syswrite($s, $chunk) } }
            } elsif ($mode eq 'line') {
                for my $s (@c) { syswrite($s, "$arg\\n") }
            } elsif ($mode eq 'slow') {
                for my $round (1 .. 3) { for my $s (@c) { syswrite($s, '{') } sleep 1 }
            }
            for my $s (@c) {
                my ($buf, $r) = ('', '');
                while (IO::Select->new($s)->can_read(15)) { my $k = sysread($s, $buf, 65536); last unless $k; $r .= $buf }
                $r =~ s/\\n//g; print "REPLY $r\\n";
            }
            """)
        func replies(_ output: String) -> [String] { output.split(separator: "\n").filter { $0.hasPrefix("REPLY") }.map(String.init) }

        // Huge requests: 5 connections of 60 MB each. VmHWM is the daemon's peak resident size.
        let rssBefore = try procStatus(pid, "VmHWM")
        var r = try runAsNobody(["/usr/bin/perl", client, socket, "big", "5", "60"])
        let rssAfter = try procStatus(pid, "VmHWM")
        print("oversize: daemon peak RSS \(rssBefore) kB before, \(rssAfter) kB after 5 x 60 MB from nobody")
        XCTAssertEqual(replies(r.output).count, 5, r.output)
        XCTAssertTrue(replies(r.output).allSatisfy { $0.contains("uid 65534") && $0.contains("may not act on this machine") }, r.output)
        XCTAssertLessThan(rssAfter - rssBefore, 32 * 1024, "the daemon grew by \(rssAfter - rssBefore) kB")

        // Slow clients: 200 of nobody's, each sending a byte a second.
        let threadsBefore = try procStatus(pid, "Threads")
        let (slow, slowOut) = try startAsNobody(["/usr/bin/perl", client, socket, "slow", "200"])
        Thread.sleep(forTimeInterval: 1.5)
        let threadsDuring = try procStatus(pid, "Threads")
        print("slow clients: daemon threads \(threadsBefore) before, \(threadsDuring) with 200 of nobody's connections open")
        XCTAssertLessThanOrEqual(threadsDuring, threadsBefore + 2, "nobody's slow connections hold daemon threads")
        let slowText = String(decoding: slowOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        slow.waitUntilExit()
        XCTAssertEqual(replies(slowText).filter { $0.contains("may not act on this machine") }.count, 200, slowText)

        // The owner's slow clients: 40 at once; 32 are served until the deadline cuts them
        // off, 8 are told the machine is busy.
        let start = Date()
        let owner = Process()
        owner.executableURL = URL(fileURLWithPath: "/usr/bin/perl")
        owner.arguments = [client, socket, "slow", "40"]
        let ownerOut = Pipe()
        owner.standardOutput = ownerOut
        try owner.run()
        Thread.sleep(forTimeInterval: 1.5)
        let threadsHeld = try procStatus(pid, "Threads")
        let ownerText = String(decoding: ownerOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        owner.waitUntilExit()
        let took = Date().timeIntervalSince(start)
        let ownerReplies = replies(ownerText)
        print("owner's slow clients: \(threadsHeld) daemon threads while held; all answered after \(String(format: "%.1f", took)) s")
        XCTAssertEqual(ownerReplies.filter { $0.contains("serving 32 connections already") }.count, 8, ownerText)
        XCTAssertEqual(ownerReplies.filter { $0.contains("did not arrive within 10 s") }.count, 32, ownerText)
        XCTAssertGreaterThanOrEqual(threadsHeld, threadsBefore + 32)
        XCTAssertLessThan(took, 14)

        // A forged log line in an id: from nobody (refused unread) and from the owner
        // (refused as an invalid id). Neither starts a line of the log.
        let forged = #"{"op":"upload","id":"x\n2026-01-01T00:00:00Z uid 0 pid 1: apply evil","payload":"AAAA"}"#
        r = try runAsNobody(["/usr/bin/perl", client, socket, "line", "1", forged])
        XCTAssertTrue(replies(r.output).first?.contains("may not act on this machine") ?? false, r.output)
        let refusal = try reply(try ControlSocket.exchange(path: socket, Array(forged.utf8)))
        XCTAssertEqual(refusal.errno, -22, refusal.error ?? "")
        Thread.sleep(forTimeInterval: 0.2)
        let log = try String(contentsOfFile: dir + "/machine.log", encoding: .utf8)
        let lines = log.split(separator: "\n")
        XCTAssertFalse(lines.contains { $0.hasPrefix("2026-01-01T00:00:00Z") }, log)
        XCTAssertTrue(lines.allSatisfy { $0.hasPrefix("splice machine:") || $0.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "#, options: .regularExpression) != nil },
                      "a log line that is not the daemon's: \(log)")
        XCTAssertTrue(log.contains(#"x\\n2026-01-01T00:00:00Z"#), "the refused id is not logged escaped: \(log)")

        // The machine still works for its owner.
        let status = try JSONDecoder().decode(LiveMachine.Status.self, from: Data(try runSplice(["machine", "status", "--json", "--socket", socket]).out.utf8))
        XCTAssertTrue(status.vcpus.allSatisfy { $0.state == .running })
        XCTAssertLessThanOrEqual(try procStatus(pid, "Threads"), threadsBefore + 2)
    }
}
