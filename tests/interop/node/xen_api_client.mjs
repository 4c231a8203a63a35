// Drives a host with Xen Orchestra's `xen-api` client, with the client's defaults, the way XO's
// backups use it: connect, object cache, events, a watched `Async.` task, the four data paths as
// XO spells them (trailing slash), and a wrong password. Run by tests/interop/test_xen_api_client.py,
// which checks the files written here against the host.
//
// Environment: XEN_API_MODULE (path of xen-api's index.mjs), XAPI_URL, XAPI_USER, XAPI_PASSWORD,
// XAPI_TRANSPORT ("" for the default, else e.g. "xml-rpc"), WORK_DIR (files go there).
// Prints one JSON object on stdout; exits non-zero with a message on stderr on any failure.

import { closeSync, createReadStream, openSync, statSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { finished } from 'node:stream/promises'
import { pathToFileURL } from 'node:url'

const env = name => {
  const value = process.env[name]
  if (value === undefined) {
    throw new Error(`${name} is not set`)
  }
  return value
}

const { createClient } = await import(pathToFileURL(env('XEN_API_MODULE')).href)
const url = env('XAPI_URL')
const user = env('XAPI_USER')
const password = env('XAPI_PASSWORD')
const transport = process.env.XAPI_TRANSPORT || undefined
const workDir = env('WORK_DIR')

const check = (condition, message) => {
  if (!condition) {
    throw new Error(`check failed: ${message}`)
  }
}

const client = auth => createClient({ url, auth, ...(transport === undefined ? {} : { transport }) })

// Bodies are read in flowing mode and written synchronously, so undici's parser is never paused
// when the host closes the connection to end the body: undici 6 asserts on a paused parser at
// that point (nodejs/undici#5360), whichever host sends the close-delimited body.
const saveBody = async (body, path) => {
  const fd = openSync(path, 'w')
  try {
    body.on('data', chunk => writeSync(fd, chunk))
    await finished(body)
  } finally {
    closeSync(fd)
  }
}

const fileStream = (path, { withLength = true } = {}) => {
  const stream = createReadStream(path)
  if (withLength) {
    stream.length = statSync(path).size
  }
  return stream
}

async function main() {
  const results = {}
  const xapi = client({ user, password })
  await xapi.connect()

  // The object cache, filled from the classes that system.listMethods names.
  await xapi.objectsFetched
  const objects = Object.values(xapi.objects.all)
  results.counts = {}
  for (const object of objects) {
    results.counts[object.$type] = (results.counts[object.$type] ?? 0) + 1
  }
  const vm = objects.find(o => o.$type === 'VM' && o.name_label === 'demo-vm')
  const sr = objects.find(o => o.$type === 'SR')
  check(vm !== undefined && sr !== undefined, 'demo-vm and its SR are in the cache')
  check(xapi.pool.$ref !== undefined && xapi.pool.$master?.$type === 'host', 'pool and its master cached')
  results.vbd_devices = vm.$VBDs.map(vbd => vbd.userdevice).sort()

  // Events: a change made through the API reaches the cache (barrier = pool.other_config events).
  await xapi.call('VM.set_name_description', vm.$ref, 'set through xen-api')
  const changed = await xapi.barrier(vm.$ref)
  check(changed.name_description === 'set through xen-api', 'the cache saw the change')

  // Async calls, watched to completion through task events.
  const snapshotRef = await xapi.callAsync('VM.snapshot', vm.$ref, 'xen-api snapshot')
  const snapshot = await xapi.barrier(snapshotRef)
  check(snapshot.is_a_snapshot && snapshot.snapshot_of === vm.$ref, 'the snapshot is cached')
  const cloneRef = await xapi.callAsync('VM.clone', vm.$ref, 'xen-api clone')
  check((await xapi.barrier(cloneRef)).name_label === 'xen-api clone', 'the clone is cached')
  try {
    await xapi.callAsync('VM.start', snapshotRef, false, false)
    throw new Error('starting a snapshot succeeded')
  } catch (error) {
    results.failed_task_code = error.code
  }
  await xapi.callAsync('VM.destroy', cloneRef)
  // What XO's VM_snapshot and VM_destroy do next with a snapshot.
  await snapshot.set_is_a_template(false)
  await snapshot.update_blocked_operations('destroy', null)
  await snapshot.update_other_config('default_template', null)
  const snapshotDisks = (await xapi.barrier(snapshotRef)).$VBDs.filter(vbd => vbd.type === 'Disk')
  check(snapshotDisks.length === 2 && !(await xapi.barrier(snapshotRef)).is_a_template, 'snapshot un-templated')
  await xapi.callAsync('VM.destroy', snapshotRef)
  for (const vbd of snapshotDisks) {
    await xapi.callAsync('VDI.destroy', vbd.VDI)
  }

  // GET /export/ and /export_raw_vdi/ (each with a task of its own, watched).
  const xva = join(workDir, 'export.xva')
  const exported = await xapi.getResource('/export/', { query: { ref: vm.$ref, use_compression: 'false' } })
  await saveBody(exported.body, xva)
  results.export_task = await exported.task
  const disk = vm.$VBDs.find(vbd => vbd.type === 'Disk' && vbd.userdevice === '0').$VDI
  const raw = join(workDir, 'disk0.raw')
  const download = await xapi.getResource('/export_raw_vdi/', { query: { vdi: disk.$ref, format: 'raw' } })
  await saveBody(download.body, raw)
  await download.task
  results.exported_vdi = disk.uuid

  // PUT /import/: the result of the watched task is the new VM's ref.
  const [importedRef] = await xapi.putResource(fileStream(xva), '/import/', { query: { sr_id: sr.$ref } })
  const imported = await xapi.barrier(importedRef)
  results.imported_vm = imported.uuid
  check(imported.$VBDs.length === 3, 'the imported VM has its disks and CD drive')

  // PUT /import_raw_vdi/ into new VDIs: a stream of known length, and one without (XO then
  // announces 1 PiB, cuts the connection when done and ignores the VDI_IO_ERROR that follows).
  const size = statSync(raw).size
  results.uploaded_vdis = []
  for (const withLength of [true, false]) {
    const vdiRef = await xapi.call('VDI.create', {
      name_label: `xen-api upload ${withLength ? 'sized' : 'unsized'}`,
      other_config: {},
      read_only: false,
      sharable: false,
      SR: sr.$ref,
      type: 'user',
      virtual_size: size,
    })
    // XO's VDI_importContent: its own task, named in the VDI's other_config, progress set by the client.
    const task = await xapi.createTask(`Importing content into VDI ${vdiRef}`)
    const vdi = await xapi.barrier(vdiRef)
    await vdi.update_other_config({ 'xo:import:task': await xapi.getField('task', task, 'uuid') })
    await xapi.call('task.set_progress', task, 0.5)
    const body = fileStream(raw, { withLength })
    await xapi.putResource(body, '/import_raw_vdi/', { query: { format: 'raw', vdi: vdiRef }, task })
    await vdi.update_other_config({ 'xo:import:task': null })
    results.uploaded_vdis.push(await xapi.getField('VDI', vdiRef, 'uuid'))
  }

  await xapi.disconnect()

  // A wrong password: the client's connect() rejects with the host's error code.
  const wrong = client({ user, password: `${password}-wrong` })
  try {
    await wrong.connect()
    throw new Error('a wrong password connected')
  } catch (error) {
    results.wrong_password_code = error.code
  }
  return results
}

main().then(
  results => {
    process.stdout.write(JSON.stringify(results) + '\n')
    process.exit(0) // the client's event loop would otherwise keep node alive
  },
  error => {
    process.stderr.write(`xen-api interop failed: ${error?.stack ?? error}\n`)
    process.exit(1)
  }
)
