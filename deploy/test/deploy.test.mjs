// deploy/ checked without a cloud: the dry run of scripts/deploy.sh for the sample environment
// prints the commands a deployment needs, the Cloud Run manifests it renders validate against
// the Knative Service schema (and keep the settings the services rely on), the Firestore index
// file has the documented shape, and the systemd units pass `systemd-analyze verify`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import Ajv from "ajv";
import { Service } from "@kubernetes-models/knative/serving.knative.dev/v1/Service";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const deploy = path.join(root, "scripts/deploy.sh");

function dryRun(envName, extraArgs = []) {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "meshrtc-deploy-"));
  const r = spawnSync(deploy, [envName, "--dry-run", "--tag", "t1", "--out", out, ...extraArgs], {
    cwd: root,
    encoding: "utf8",
  });
  return { ...r, out };
}

function sampleEnv() {
  const vars = {};
  for (const line of fs.readFileSync(path.join(root, "deploy/env/sample.env"), "utf8").split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]] = m[2].replace(/^"|"$/g, "");
  }
  return vars;
}

const env = sampleEnv();
const peers = env.PEERS.split(/\s+/).map((spec) => {
  const [id, region] = spec.split("@");
  return { id, region: region || env.REGION };
});
const run = dryRun("sample");
const commands = run.stdout.trim().split("\n");

test("the dry run succeeds and changes nothing", () => {
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /dry run: nothing was changed/);
  assert.ok(commands.length > 10);
  for (const c of commands) assert.ok(c.startsWith("+ "), `not a printed command: ${c}`);
});

test("it builds and pushes one image per service from deploy/Dockerfile", () => {
  const registry = `${env.REGION}-docker.pkg.dev/${env.PROJECT}/${env.REPOSITORY}`;
  for (const target of ["webrtc-worker", "signaling-proxy", "gossip-push"]) {
    const image = `${registry}/${target}:t1`;
    assert.ok(
      commands.includes(`+ docker build -f deploy/Dockerfile --target ${target} -t ${image} .`),
      `no build of ${target}`,
    );
    assert.ok(commands.includes(`+ docker push ${image}`), `no push of ${target}`);
  }
  const dockerfile = fs.readFileSync(path.join(root, "deploy/Dockerfile"), "utf8");
  for (const target of ["webrtc-worker", "signaling-proxy", "gossip-push", "meshctl"]) {
    assert.match(dockerfile, new RegExp(`^FROM runtime AS ${target}$`, "m"));
  }
  assert.match(dockerfile, /^USER nonroot:nonroot$/m, "images run as a non-root user");
});

test("it creates every Firestore index in deploy/firestore.indexes.json", () => {
  const { indexes } = JSON.parse(fs.readFileSync(path.join(root, "deploy/firestore.indexes.json"), "utf8"));
  const creates = commands.filter((c) => c.includes("firestore indexes composite create"));
  assert.equal(creates.length, indexes.length);
  for (const index of indexes) {
    const fields = index.fields
      .map((f) => `--field-config=field-path=${f.fieldPath}\\,order=${f.order.toLowerCase()}`)
      .join(" ");
    assert.ok(
      creates.some((c) => c.includes(`--collection-group=${index.collectionGroup} `) && c.includes(fields)),
      `no index ${JSON.stringify(index)}`,
    );
  }
});

test("the Firestore index file has the documented shape", () => {
  const schema = {
    type: "object",
    required: ["indexes", "fieldOverrides"],
    additionalProperties: false,
    properties: {
      indexes: {
        type: "array",
        items: {
          type: "object",
          required: ["collectionGroup", "queryScope", "fields"],
          additionalProperties: false,
          properties: {
            collectionGroup: { type: "string", pattern: "^mesh_[a-z_]+$" },
            queryScope: { enum: ["COLLECTION", "COLLECTION_GROUP"] },
            fields: {
              type: "array",
              minItems: 2,
              items: {
                type: "object",
                required: ["fieldPath", "order"],
                additionalProperties: false,
                properties: {
                  fieldPath: { type: "string" },
                  order: { enum: ["ASCENDING", "DESCENDING"] },
                },
              },
            },
          },
        },
      },
      fieldOverrides: { type: "array" },
    },
  };
  const validate = new Ajv({ allErrors: true }).compile(schema);
  const doc = JSON.parse(fs.readFileSync(path.join(root, "deploy/firestore.indexes.json"), "utf8"));
  assert.ok(validate(doc), JSON.stringify(validate.errors));
});

function manifest(name) {
  return YAML.parse(fs.readFileSync(path.join(run.out, name), "utf8"));
}

function envOf(service) {
  return Object.fromEntries(
    service.spec.template.spec.containers[0].env.map((e) => [e.name, e.value ?? e.valueFrom]),
  );
}

test("each peer gets a worker manifest that validates and keeps what a worker needs", () => {
  for (const { id, region } of peers) {
    assert.ok(
      commands.includes(`+ gcloud run services replace ${path.join(run.out, `worker-${id}.yaml`)} --region ${region}`),
      `no deploy of ${id} in ${region}`,
    );
    const doc = manifest(`worker-${id}.yaml`);
    new Service(doc).validate();
    assert.equal(doc.metadata.name, `mesh-worker-${id}`);
    // Internal ingress: only the VPC reaches a worker's API.
    assert.equal(doc.metadata.annotations["run.googleapis.com/ingress"], "internal");
    const annotations = doc.spec.template.metadata.annotations;
    assert.equal(annotations["autoscaling.knative.dev/minScale"], "1", "never scaled to zero");
    assert.equal(annotations["autoscaling.knative.dev/maxScale"], "1", "one instance holds the links");
    assert.equal(annotations["run.googleapis.com/cpu-throttling"], "false", "CPU always allocated");
    const container = doc.spec.template.spec.containers[0];
    assert.equal(container.startupProbe.httpGet.path, "/readyz");
    assert.equal(container.livenessProbe.httpGet.path, "/healthz");
    const vars = envOf(doc);
    assert.equal(vars.PEER_ID, id);
    assert.equal(vars.MESH_STORE, "firestore");
    assert.equal(vars.MESH_REGION, region);
    assert.equal(vars.MESH_PUBLIC_URL, `https://mesh-worker-${id}-${env.PROJECT_NUMBER}.${region}.run.app`);
    assert.deepEqual(vars.MESH_SIGNING_KEY, { secretKeyRef: { name: `mesh-key-${id}`, key: "latest" } });
    assert.equal(vars.MESH_ICE_POLICY, "relay", "Cloud Run has no inbound UDP");
  }
});

test("the proxy and gossip-push manifests validate; the scheduler calls gossip-push every 2 minutes with OIDC", () => {
  const proxy = manifest("proxy.yaml");
  new Service(proxy).validate();
  assert.equal(proxy.spec.template.metadata.annotations["autoscaling.knative.dev/maxScale"], "1",
    "the WebSocket hub lives in one instance");
  assert.deepEqual(envOf(proxy).MESH_API_TOKENS, { secretKeyRef: { name: "mesh-api-tokens", key: "latest" } });

  const gossip = manifest("gossip-push.yaml");
  new Service(gossip).validate();
  assert.deepEqual(gossip.spec.template.spec.containers[0].args, ["serve"]);
  const url = `https://mesh-gossip-push-${env.PROJECT_NUMBER}.${env.REGION}.run.app`;
  const vars = envOf(gossip);
  assert.equal(vars.MESH_OIDC_AUDIENCE, url);
  assert.equal(vars.MESH_OIDC_PRINCIPALS, `${env.SCHEDULER_SA}=operator`);
  assert.equal(vars.MESH_TRUST_SEEDS, env.TRUST_SEEDS.split(/\s+/).join(","));

  const job = commands.find((c) => c.startsWith("+ gcloud scheduler jobs create http mesh-gossip-push"));
  assert.ok(job, "no scheduler job");
  for (const part of [
    "--schedule \\*/2\\ \\*\\ \\*\\ \\*\\ \\*",
    `--uri ${url}/run`,
    "--http-method POST",
    `--oidc-service-account-email ${env.SCHEDULER_SA}`,
    `--oidc-token-audience ${url}`,
  ]) {
    assert.ok(job.includes(part), `scheduler job lacks ${part}: ${job}`);
  }
  assert.ok(
    commands.includes(`+ gcloud run services add-iam-policy-binding mesh-gossip-push --region ${env.REGION} --member=serviceAccount:${env.SCHEDULER_SA} --role=roles/run.invoker`),
    "only the scheduler may invoke gossip-push",
  );
  assert.ok(!commands.some((c) => c.includes("mesh-gossip-push") && c.includes("allUsers")));
});

test("a manifest the Knative schema refuses is caught", () => {
  const doc = manifest(`worker-${peers[0].id}.yaml`);
  doc.spec.template.spec.containers[0].ports[0].containerPort = "eighty";
  assert.throws(() => new Service(doc).validate(), /containerPort must be integer/);
});

test("an environment missing a variable is refused before anything runs", () => {
  const dir = path.join(root, "deploy/env");
  const name = `broken-${process.pid}`;
  const file = path.join(dir, `${name}.env`);
  fs.writeFileSync(file, fs.readFileSync(path.join(dir, "sample.env"), "utf8").replace(/^PROJECT=.*$/m, ""));
  try {
    const r = dryRun(name);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /lacks PROJECT/);
    assert.equal(r.stdout, "");
  } finally {
    fs.rmSync(file);
  }
  const r = dryRun("no-such-env");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /no environment/);
});

test("the systemd units verify", { skip: !hasSystemdAnalyze() && "systemd-analyze is not installed" }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meshrtc-units-"));
  fs.copyFileSync(path.join(root, "deploy/systemd/meshrtc-proxy.service"), path.join(dir, "meshrtc-proxy.service"));
  fs.copyFileSync(path.join(root, "deploy/systemd/meshrtc-worker@.service"), path.join(dir, "meshrtc-worker@peer-1.service"));
  const r = spawnSync("systemd-analyze", ["verify", "--man=no", "meshrtc-proxy.service", "meshrtc-worker@peer-1.service"], {
    cwd: dir,
    encoding: "utf8",
  });
  // The binaries are not installed on a test machine; anything else is a mistake in a unit.
  const complaints = (r.stdout + r.stderr)
    .split("\n")
    .filter((l) => l.trim() && !/Command \/usr\/local\/bin\/[a-z-]+ is not executable/.test(l));
  assert.deepEqual(complaints, []);
});

function hasSystemdAnalyze() {
  try {
    execFileSync("systemd-analyze", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("the workflows: CI runs fmt, clippy, cargo-deny and the tests; deploy uses Workload Identity Federation", () => {
  const read = (f) => YAML.parse(fs.readFileSync(path.join(root, ".github/workflows", f), "utf8"));
  const ci = read("ci.yml");
  const ciRuns = JSON.stringify(ci.jobs);
  for (const step of ["cargo fmt --all --check", "cargo clippy --workspace --all-targets --locked -- -D warnings",
    "EmbarkStudios/cargo-deny-action", "scripts/test.sh"]) {
    assert.ok(ciRuns.includes(step), `CI lacks ${step}`);
  }
  const deployWf = read("deploy.yml");
  assert.equal(deployWf.permissions["id-token"], "write");
  const steps = deployWf.jobs.deploy.steps;
  const auth = steps.find((s) => s.uses?.startsWith("google-github-actions/auth@"));
  assert.ok(auth?.with?.workload_identity_provider, "no Workload Identity Federation");
  assert.ok(!JSON.stringify(deployWf).includes("credentials_json"), "no long-lived key");
  assert.ok(steps.some((s) => /scripts\/deploy\.sh "\$MESH_ENV" --dry-run/.test(s.run ?? "")));
  assert.ok(steps.some((s) => /scripts\/deploy\.sh "\$MESH_ENV" --tag/.test(s.run ?? "")));
  assert.deepEqual(deployWf.on.workflow_run.workflows, ["ci"], "deploys only after CI");
});
