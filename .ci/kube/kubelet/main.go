// A small fake kubelet for the conformance rig (test tooling only; the product is Rust).
//
// It registers one Ready Node, binds every pending Pod to it, gives each Pod an address
// from --pod-cidr and runs the Pod's echo-basic container as a real process in a network
// namespace of its own, linked to the bridge --bridge by a veth pair. A Pod is marked
// Running and Ready once its process runs; a terminating Pod's process is killed and the
// Pod force-deleted.
//
// It also serves the Pods' logs on the kubelet port (10250), for pods/log.
//
// Limits, because there is no container runtime: only `echo-basic` images (the binary
// given by --echo-basic), `coredns` images (--coredns, with the container's args) and
// `sluice` images (--sluice, with the container's args: the per-Gateway data planes)
// run; a Pod of any other image is reported Running without a process, and the kubelet
// logs that. Secret and ConfigMap volumes are written to files under --dir, and env
// values and args that point into a volume's mountPath are rewritten to those files
// (the process sees no mount namespace); emptyDir volumes are empty folders there.
// There is no service account token projection: a sluice Pod is given the kubelet's own
// kubeconfig in $KUBECONFIG, its server moved from 127.0.0.1 to the bridge's address
// (the API server must listen there).
// Readiness probes are not run: a started process is Ready.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
)

type kubelet struct {
	client   kubernetes.Interface
	node     string
	echo     string
	coredns  string
	sluice   string
	bridge   string
	gateway  netip.Addr
	prefix   int
	dir      string
	mu       sync.Mutex
	next     netip.Addr
	pods     map[types.UID]*pod
	links    int
	podStore cache.Store
}

type pod struct {
	ip   netip.Addr
	cmd  *exec.Cmd
	link string
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the API server")
	node := flag.String("node", "sluice-node", "name of the Node to register")
	echo := flag.String("echo-basic", "", "path of the echo-basic binary")
	coredns := flag.String("coredns", "", "path of a coredns binary, run for coredns images (optional)")
	sluice := flag.String("sluice", "", "path of the sluice binary, run for sluice images (optional)")
	bridge := flag.String("bridge", "sbr0", "bridge the Pods' veth pairs join (made if missing)")
	cidr := flag.String("pod-cidr", "198.18.128.1/17", "the bridge's address and the Pods' network")
	dir := flag.String("dir", os.TempDir(), "where Pod volumes are written")
	flag.Parse()
	if *echo == "" {
		log.Fatal("--echo-basic is required")
	}
	prefix, err := netip.ParsePrefix(*cidr)
	if err != nil {
		log.Fatalf("--pod-cidr %q: %v", *cidr, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("--kubeconfig %q: %v", *kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	client := kubernetes.NewForConfigOrDie(cfg)
	k := &kubelet{
		client:  client,
		node:    *node,
		echo:    *echo,
		coredns: *coredns,
		sluice:  *sluice,
		bridge:  *bridge,
		gateway: prefix.Addr(),
		prefix:  prefix.Bits(),
		dir:     *dir,
		next:    prefix.Addr().Next(),
		pods:    map[types.UID]*pod{},
	}
	if *sluice != "" {
		// The kubeconfig sluice Pods get: this one, reached over the bridge.
		text, err := os.ReadFile(*kubeconfig)
		if err != nil {
			log.Fatalf("--kubeconfig %q: %v", *kubeconfig, err)
		}
		moved := strings.ReplaceAll(string(text), "127.0.0.1", k.gateway.String())
		if err := os.WriteFile(k.podKubeconfig(), []byte(moved), 0o600); err != nil {
			log.Fatalf("pod kubeconfig: %v", err)
		}
	}
	if err := k.setupBridge(); err != nil {
		log.Fatalf("bridge %s: %v", k.bridge, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := k.serveLogs(net.JoinHostPort(k.gateway.String(), "10250")); err != nil {
		log.Fatalf("kubelet port: %v", err)
	}
	if err := k.registerNode(ctx); err != nil {
		log.Fatalf("node %s: %v", k.node, err)
	}
	k.run(ctx)
	k.killAll()
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func (k *kubelet) setupBridge() error {
	if run("ip", "link", "show", k.bridge) == nil {
		return nil
	}
	if err := run("ip", "link", "add", k.bridge, "type", "bridge"); err != nil {
		return err
	}
	if err := run("ip", "addr", "add", fmt.Sprintf("%s/%d", k.gateway, k.prefix), "dev", k.bridge); err != nil {
		return err
	}
	return run("ip", "link", "set", k.bridge, "up")
}

func (k *kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: k.node, Labels: map[string]string{"kubernetes.io/hostname": k.node}},
	}
	_, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	go func() {
		for {
			if err := k.nodeReady(ctx); err != nil {
				log.Printf("node status: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Second):
			}
		}
	}()
	return k.nodeReady(ctx)
}

func (k *kubelet) nodeReady(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return k.nodeReadyOnce(ctx) })
}

func (k *kubelet) nodeReadyOnce(ctx context.Context) error {
	n, err := k.client.CoreV1().Nodes().Get(ctx, k.node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	n.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.gateway.String()}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	capacity := corev1.ResourceList{}
	for name, q := range map[corev1.ResourceName]string{"cpu": "64", "memory": "256Gi", "pods": "1000"} {
		capacity[name] = resource.MustParse(q)
	}
	n.Status.Capacity, n.Status.Allocatable = capacity, capacity
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func (k *kubelet) run(ctx context.Context) {
	factory := informers.NewSharedInformerFactory(k.client, 0)
	informer := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	_, _ = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	k.podStore = informer.GetStore()
	factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), informer.HasSynced)
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	log.Printf("kubelet %s ready: pods on %s/%d via %s", k.node, k.gateway, k.prefix, k.bridge)
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return
		}
		if err := k.sync(ctx, key); err != nil {
			log.Printf("pod %s: %v (retrying)", key, err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

func (k *kubelet) sync(ctx context.Context, key string) error {
	obj, exists, err := k.podStore.GetByKey(key)
	if err != nil {
		return err
	}
	if !exists {
		k.forgetMissing()
		return nil
	}
	p := obj.(*corev1.Pod)
	pods := k.client.CoreV1().Pods(p.Namespace)
	if p.DeletionTimestamp != nil {
		k.stop(p.UID)
		zero := int64(0)
		err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &p.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if p.Spec.NodeName == "" {
		return pods.Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.node},
		}, metav1.CreateOptions{})
	}
	if p.Spec.NodeName != k.node || p.Status.Phase == corev1.PodRunning {
		return nil
	}
	ip, err := k.start(p)
	if err != nil {
		return err
	}
	now := metav1.Now()
	ready := []corev1.PodCondition{}
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		ready = append(ready, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	status := p.DeepCopy()
	status.Status.Phase = corev1.PodRunning
	status.Status.PodIP = ip.String()
	status.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	status.Status.HostIP = k.gateway.String()
	status.Status.StartTime = &now
	status.Status.Conditions = ready
	status.Status.ContainerStatuses = nil
	for _, c := range p.Spec.Containers {
		status.Status.ContainerStatuses = append(status.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: true, Started: new(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err = pods.UpdateStatus(ctx, status, metav1.UpdateOptions{})
	return err
}

// start runs the Pod's process once and returns its address.
func (k *kubelet) start(p *corev1.Pod) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if running, ok := k.pods[p.UID]; ok {
		return running.ip, nil
	}
	ip := k.next
	k.next = k.next.Next()
	entry := &pod{ip: ip}
	if len(p.Spec.Containers) == 0 {
		return ip, fmt.Errorf("no containers")
	}
	c := p.Spec.Containers[0]
	var binary string
	switch {
	case strings.Contains(c.Image, "echo-basic"):
		binary = k.echo
	case strings.Contains(c.Image, "coredns") && k.coredns != "":
		binary = k.coredns
	case strings.Contains(c.Image, "sluice") && k.sluice != "":
		binary = k.sluice
	default:
		log.Printf("pod %s/%s: image %s is not run (no container runtime); reported Running", p.Namespace, p.Name, c.Image)
		k.pods[p.UID] = entry
		return ip, nil
	}
	env, mounts, err := k.environment(p, c, ip)
	if err != nil {
		return ip, err
	}
	if binary == k.sluice {
		env = append(env, "KUBECONFIG="+k.podKubeconfig())
	}
	// The process waits for its eth0 (moved in below), addresses it, then becomes the
	// container's binary with its args.
	script := fmt.Sprintf(`while ! ip link show eth0 >/dev/null 2>&1; do sleep 0.02; done
ip link set lo up; ip addr add %s/%d dev eth0; ip link set eth0 up; ip route add default via %s
exec "$0" "$@"`, ip, k.prefix, k.gateway)
	argv := []string{"--net", "--", "sh", "-ec", script, binary}
	for _, a := range c.Args {
		argv = append(argv, inVolume(a, mounts))
	}
	cmd := exec.Command("unshare", argv...)
	cmd.Env = env
	logFile, err := os.Create(k.logPath(p.Namespace, p.Name))
	if err != nil {
		return ip, err
	}
	// Each line of output is stored with its time, as a container runtime does, so
	// `kubectl logs --since-time` (the mirror tests use it) can be answered.
	out, err := cmd.StdoutPipe()
	if err != nil {
		return ip, err
	}
	cmd.Stderr = cmd.Stdout
	go stampLines(out, logFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return ip, err
	}
	// The veth's far end must land in the Pod's namespace, which exists only once
	// unshare has run: until then the process is still in ours.
	if err := waitForOwnNetns(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return ip, err
	}
	k.links++
	link := fmt.Sprintf("vh%d", k.links)
	if err := run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", fmt.Sprint(cmd.Process.Pid)); err != nil {
		_ = cmd.Process.Kill()
		return ip, err
	}
	if err := run("ip", "link", "set", link, "master", k.bridge, "up"); err != nil {
		_ = cmd.Process.Kill()
		return ip, err
	}
	go func() { _ = cmd.Wait() }()
	entry.cmd, entry.link = cmd, link
	k.pods[p.UID] = entry
	log.Printf("pod %s/%s: %s on %s (pid %d)", p.Namespace, p.Name, filepath.Base(binary), ip, cmd.Process.Pid)
	return ip, nil
}

func (k *kubelet) podKubeconfig() string {
	return filepath.Join(k.dir, "pod-kubeconfig")
}

func (k *kubelet) logPath(ns, name string) string {
	return filepath.Join(k.dir, fmt.Sprintf("%s_%s.log", ns, name))
}

func stampLines(r io.Reader, w *os.File) {
	defer w.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fmt.Fprintf(w, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), sc.Text())
	}
}

// serveLogs answers the API server's pods/log requests
// (GET /containerLogs/NAMESPACE/POD/CONTAINER?sinceTime=...&timestamps=...) on the
// kubelet port, over TLS with a throwaway certificate (the API server does not check
// kubelet certificates unless told to).
func (k *kubelet) serveLogs(addr string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: k.node},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IP(k.gateway.AsSlice())},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(k.logPath(r.PathValue("ns"), r.PathValue("pod")))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		var since time.Time
		if v := r.URL.Query().Get("sinceTime"); v != "" {
			if since, err = time.Parse(time.RFC3339, v); err != nil {
				http.Error(w, "sinceTime: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		stamps := r.URL.Query().Get("timestamps") == "true"
		for _, line := range strings.SplitAfter(string(data), "\n") {
			stamp, text, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil || t.Before(since) {
				continue
			}
			if stamps {
				text = line
			}
			_, _ = io.WriteString(w, text)
		}
	})
	srv := &http.Server{
		Addr:              addr,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{
			Certificate: [][]byte{der}, PrivateKey: key,
		}}},
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() { log.Print(srv.ServeTLS(ln, "", "")) }()
	return nil
}

func waitForOwnNetns(pid int) error {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			return err
		}
		if ns != self {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("process %d did not enter a network namespace of its own in 10 s", pid)
}

// environment resolves the container's env and writes its Secret and ConfigMap volumes.
// environment writes the Pod's Secret and ConfigMap volumes under --dir and returns the
// container's env, and where each mountPath was written.
func (k *kubelet) environment(p *corev1.Pod, c corev1.Container, ip netip.Addr) ([]string, map[string]string, error) {
	ctx := context.Background()
	mounts := map[string]string{}
	for _, v := range p.Spec.Volumes {
		data := map[string][]byte{}
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			s, err := k.client.CoreV1().Secrets(p.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			data, items = s.Data, v.Secret.Items
		case v.ConfigMap != nil:
			m, err := k.client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			for key, val := range m.Data {
				data[key] = []byte(val)
			}
			items = v.ConfigMap.Items
		case v.EmptyDir != nil:
		default:
			continue
		}
		dir := filepath.Join(k.dir, string(p.UID), v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		if len(items) == 0 {
			for key := range data {
				items = append(items, corev1.KeyToPath{Key: key, Path: key})
			}
		}
		for _, it := range items {
			if err := os.WriteFile(filepath.Join(dir, it.Path), data[it.Key], 0o600); err != nil {
				return nil, nil, err
			}
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				mounts[m.MountPath] = dir
			}
		}
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, e := range c.Env {
		val := e.Value
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil:
				switch f.FieldRef.FieldPath {
				case "metadata.name":
					val = p.Name
				case "metadata.namespace":
					val = p.Namespace
				case "status.podIP":
					val = ip.String()
				case "spec.nodeName":
					val = k.node
				default:
					return nil, nil, fmt.Errorf("env %s: fieldRef %s is not supported", e.Name, f.FieldRef.FieldPath)
				}
			case f.SecretKeyRef != nil:
				s, err := k.client.CoreV1().Secrets(p.Namespace).Get(ctx, f.SecretKeyRef.Name, metav1.GetOptions{})
				if err != nil {
					return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
				}
				val = string(s.Data[f.SecretKeyRef.Key])
			case f.ConfigMapKeyRef != nil:
				m, err := k.client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, f.ConfigMapKeyRef.Name, metav1.GetOptions{})
				if err != nil {
					return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
				}
				val = m.Data[f.ConfigMapKeyRef.Key]
			default:
				return nil, nil, fmt.Errorf("env %s: this valueFrom is not supported", e.Name)
			}
		}
		env = append(env, e.Name+"="+inVolume(val, mounts))
	}
	return env, mounts, nil
}

// inVolume rewrites a path under a volume's mountPath to where the volume was written.
func inVolume(val string, mounts map[string]string) string {
	// `--flag=/mount/path` as well as `/mount/path`.
	prefix := ""
	if i := strings.Index(val, "="); strings.HasPrefix(val, "-") && i > 0 {
		prefix, val = val[:i+1], val[i+1:]
	}
	for path, dir := range mounts {
		if val == path || strings.HasPrefix(val, path+"/") {
			return prefix + dir + strings.TrimPrefix(val, path)
		}
	}
	return prefix + val
}

func (k *kubelet) stop(uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p, ok := k.pods[uid]; ok {
		if p.cmd != nil && p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
		}
		delete(k.pods, uid)
	}
}

// forgetMissing stops the processes of Pods deleted without a terminating phase seen here.
func (k *kubelet) forgetMissing() {
	live := map[types.UID]bool{}
	for _, obj := range k.podStore.List() {
		live[obj.(*corev1.Pod).UID] = true
	}
	k.mu.Lock()
	var gone []types.UID
	for uid := range k.pods {
		if !live[uid] {
			gone = append(gone, uid)
		}
	}
	k.mu.Unlock()
	for _, uid := range gone {
		k.stop(uid)
	}
}

func (k *kubelet) killAll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for uid, p := range k.pods {
		if p.cmd != nil && p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
		}
		delete(k.pods, uid)
	}
}
