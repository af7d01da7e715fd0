export { GroupManager, type GroupView, type GroupMember, type GroupManagerOptions, type GroupAuthorityDeps, type AuthorityVerdict } from './group-manager.js'
export {
  onTick, onMembers, onVoteRequest, onVoteReply, onVoteRefused, onCertificate, initialGroupState, shownTerm, leaderLive, CANDIDACY_TIMEOUT_MS, MAX_TERM_STEP,
  type GroupState, type ElectionTimings, type ElectionAction, type Step, type VoteDecision, type VoteRefusal
} from './election.js'
export { verifyCertificate, quorum, majority, VIEW_SLACK, type CertificateContext, type CertificateVerdict } from './certificate.js'
